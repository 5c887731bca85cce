"""Files the ecosystem reads (issue 15, items 1 and 5): LoRA adapters in PEFT's own format,
every adapter's record (base model, method, class names, eval transform), adapters and models
from the Hugging Face Hub cache (offline), timm's hf-hub: / local-dir: names, and serving with
the run's own eval transform and class names."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import scaleshift
from scaleshift.adapter_files import (CONFIG_NAME, FORMAT, RECORD_NAME, WEIGHTS_NAME, adapter_state,
                                      backbone_fingerprint, backbone_for, read_adapter_config)
from scaleshift.cli import main
from scaleshift.config import make_config
from scaleshift.data import build_transform, eval_transform_config
from scaleshift.errors import ScaleshiftError
from scaleshift.io import file_sha256
from scaleshift.merge import perturb_trainable
from scaleshift.methods import config_of
from scaleshift.models import identity_of
from scaleshift.runs import load_run

from conftest import make_model

peft = pytest.importorskip("peft")

KWARGS = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
KWARGS_YAML = "{img_size: 32, patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}"
HUB_TIMM = "timm/vit_tiny_patch16_224.augreg_in21k"


def plain_vit(num_classes: int, backbone_file=None) -> torch.nn.Module:
    """The tiny ViT built by timm alone (no scaleshift), with the backbone weights of a file."""
    model = timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **KWARGS)
    if backbone_file is not None:
        missing, _ = model.load_state_dict(load_file(str(backbone_file)), strict=False)
        assert set(missing) == {"head.weight", "head.bias"}
    return model.eval()


def images(batch=3, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("backbone") / "backbone.safetensors"
    torch.manual_seed(3)
    headless = timm.create_model("vit_tiny_patch16_224", num_classes=0, **KWARGS)
    save_file({k: v.contiguous() for k, v in headless.state_dict().items()}, str(path))
    return path


def train_run(out, backbone_file, *extra):
    assert main(["train", f"model_kwargs={KWARGS_YAML}", f"pretrained={backbone_file}",
                 "train_split=train800", "val_split=val200", "test_split=test", "input_size=32",
                 "batch_size=50", "epochs=1", "max_steps_per_epoch=3", "lr=1e-2",
                 f"out_dir={out}", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, backbone_file):
    return train_run(tmp_path_factory.mktemp("lora") / "run", backbone_file, "dataset=digits",
                     "method=lora", "method_options={rank: 4, alpha: 8}")


# ----------------------------------------------------------------------------- PEFT format
@pytest.mark.slow
def test_a_trained_lora_adapter_loads_with_peft_and_gives_the_same_logits(lora_run, backbone_file):
    adapter = lora_run / "adapter"
    config = json.loads((adapter / CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["modules_to_save"] == ["head"]
    assert config["target_modules"] == sorted(f"blocks.{i}.{m}" for i in range(2)
                                              for m in ("attn.qkv", "mlp.fc1", "mlp.fc2"))
    assert all(k.startswith("base_model.model.") and ".default." not in k
               for k in load_file(str(adapter / WEIGHTS_NAME)))
    assert "scaleshift" not in config and config["base_model_name_or_path"] == str(backbone_file)
    base = plain_vit(10, backbone_file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert peft.PeftConfig.from_pretrained(str(adapter)).peft_type == "LORA"
        peft_model = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    assert [str(w.message) for w in caught] == []
    _, ours = load_run(lora_run)
    x = images()
    with torch.no_grad():
        theirs, expected = peft_model(x), ours.eval()(x)
    assert (theirs - expected).abs().max() <= 1e-5
    assert (theirs - plain_vit(10, backbone_file)(x)).abs().max() > 1e-3   # the adapter acts


@pytest.mark.slow
def test_every_adapter_records_base_model_method_classes_and_eval_transform(lora_run, backbone_file):
    meta = read_adapter_config(lora_run / "adapter")
    assert meta["format_version"] == 4 and meta["loadable_by_peft"] is True
    assert meta["method"] == "lora" and meta["options"]["rank"] == 4
    assert meta["class_names"] == [str(d) for d in range(10)]     # the digits dataset's names
    assert meta["base_model"]["source"] == "file"
    assert meta["base_model"]["weights_sha256"] == file_sha256(backbone_file)
    _, model = load_run(lora_run)
    assert meta["eval_transform"] == eval_transform_config("vtab", model, 32)
    assert meta["eval_transform"]["input_size"] == [3, 32, 32]


def test_peft_loads_a_scaleshift_lora_adapter_without_a_warning_or_log(tmp_path, caplog):
    """adapter_config.json is PEFT's own LoraConfig; scaleshift's record sits in a file PEFT
    does not read. Nothing warns, through `warnings` or PEFT's logger."""
    import logging
    model = scaleshift.apply(scaleshift.create_model("vit_tiny_patch16_224", 4, seed=0, **KWARGS),
                             "lora", rank=2)
    perturb_trainable(model)
    scaleshift.save_adapter(model, tmp_path / "a", class_names=list("abcd"))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        CONFIG_NAME, WEIGHTS_NAME, RECORD_NAME]
    base = timm.create_model("vit_tiny_patch16_224", num_classes=4, **KWARGS)
    base.load_state_dict(scaleshift.create_model("vit_tiny_patch16_224", 4, seed=0,
                                                 **KWARGS).state_dict())
    caplog.set_level(logging.DEBUG, logger="peft")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "a")).eval()
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model.eval()(x), atol=1e-5, rtol=0)
    meta = read_adapter_config(tmp_path / "a")
    assert meta["class_names"] == list("abcd") and meta["method"] == "lora"


def test_base_model_name_or_path_comes_from_the_identity_record():
    from scaleshift.adapter_files import base_model_name_or_path
    hub = dict(name="vit_tiny_patch16_224.augreg_in21k", architecture="vit_tiny_patch16_224",
               source="hub", tag="augreg_in21k")
    assert base_model_name_or_path(hub) == "timm/vit_tiny_patch16_224.augreg_in21k"
    assert base_model_name_or_path(dict(hub, name="hf-hub:org/x", tag=None)) == "org/x"
    assert base_model_name_or_path(dict(hub, source="file", weights_file="/w.safetensors")) \
        == "/w.safetensors"
    assert base_model_name_or_path(dict(hub, source="random")) is None
    assert base_model_name_or_path(None) is None


def test_a_format_3_lora_adapter_still_loads(tmp_path):
    """Format 3 kept a LoRA adapter's record in a block of adapter_config.json."""
    model = scaleshift.apply(make_model("vit"), "lora", rank=2)
    perturb_trainable(model)
    directory = scaleshift.save_adapter(model, tmp_path / "a")
    record = json.loads((directory / RECORD_NAME).read_text())
    config = json.loads((directory / CONFIG_NAME).read_text())
    (directory / CONFIG_NAME).write_text(json.dumps({**config, "scaleshift": dict(record, format_version=3)}))
    (directory / RECORD_NAME).unlink()
    x = images(2)
    with torch.no_grad():
        loaded = scaleshift.load_adapter(make_model("vit"), directory).eval()(x)
        torch.testing.assert_close(loaded, model.eval()(x))


@pytest.mark.slow
def test_lora_norm_statistics_travel_to_peft(tmp_path):
    """A batch-norm backbone: the running statistics training changed load in PEFT too (their
    modules are modules_to_save, their frozen parts stored for PEFT only)."""
    model = scaleshift.apply(scaleshift.create_model("test_resnet", 3, seed=1), "lora",
                             targets="conv1,conv2", rank=2)
    perturb_trainable(model)
    model.train()
    model(torch.randn(4, 3, 64, 64))
    scaleshift.save_adapter(model, tmp_path / "r")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval()(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = peft.PeftModel.from_pretrained(scaleshift.create_model("test_resnet", 3, seed=1),
                                                    str(tmp_path / "r")).eval()(x)
        ours = scaleshift.load_adapter(scaleshift.create_model("test_resnet", 3, seed=1),
                                       tmp_path / "r").eval()(x)
    assert (theirs - expected).abs().max() <= 1e-5 and (ours - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["ssf", "bias", "linear"])
def test_methods_peft_cannot_represent_claim_no_peft_type(tmp_path, method):
    model = scaleshift.apply(make_model("vit"), method)
    perturb_trainable(model)
    scaleshift.save_adapter(model, tmp_path / "a")
    raw = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert "peft_type" not in raw and set(raw) == {"scaleshift"}
    assert raw["scaleshift"]["loadable_by_peft"] is False and raw["scaleshift"]["method"] == method
    with pytest.raises(TypeError, match="peft_type"):       # PEFT refuses it, nothing pretends
        peft.PeftConfig.from_pretrained(str(tmp_path / "a"))
    x = images(2)
    with torch.no_grad():
        loaded = scaleshift.load_adapter(make_model("vit"), tmp_path / "a").eval()(x)
        torch.testing.assert_close(loaded, model.eval()(x))


def test_a_peft_adapter_scaleshift_did_not_write_is_named(tmp_path):
    model = peft.get_peft_model(timm.create_model("vit_tiny_patch16_224", num_classes=5, **KWARGS),
                                peft.LoraConfig(r=2, target_modules=["qkv"], modules_to_save=["head"]))
    model.save_pretrained(str(tmp_path / "p"))
    with pytest.raises(ScaleshiftError, match="PEFT LORA adapter that scaleshift did not write"
                                              ".*PeftModel.from_pretrained"):
        scaleshift.load_adapter(make_model("vit"), tmp_path / "p")


def write_format_2(model, directory):
    """An adapter laid out as scaleshift wrote them before format 3: the record at the top
    level of adapter_config.json, tensors under the model's own names."""
    directory.mkdir()
    state = {k: v.contiguous() for k, v in adapter_state(model).items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": FORMAT})
    config = config_of(model)
    identity = identity_of(model)
    meta = dict(format=FORMAT, format_version=2, scaleshift_version="0.1.0", base_model=identity.as_dict(),
                model_name=identity["name"], method=config["method"], options=config["options"],
                num_classes=model.num_classes, backbone_fingerprint=backbone_fingerprint(model),
                tensors={k: list(v.shape) for k, v in state.items()},
                weights_sha256=file_sha256(directory / WEIGHTS_NAME))
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2))


@pytest.mark.parametrize("method", ["lora", "ssf"])
def test_adapters_of_the_previous_format_still_load(tmp_path, method):
    model = scaleshift.apply(make_model("vit"), method)
    perturb_trainable(model)
    write_format_2(model, tmp_path / "old")
    meta = read_adapter_config(tmp_path / "old")
    assert meta["class_names"] is None and meta["eval_transform"] is None
    x = images(2)
    with torch.no_grad():
        loaded = scaleshift.load_adapter(make_model("vit"), tmp_path / "old").eval()(x)
        torch.testing.assert_close(loaded, model.eval()(x))


# ----------------------------------------------------------------------------- the Hub cache
def hub_repo(cache, repo_id, files, commit="a" * 40):
    """Lay out `files` (name -> path) as huggingface_hub caches a snapshot of `repo_id`."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, path in files.items():
        (snapshot / name).write_bytes(path.read_bytes())
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hub cache in tmp_path, for this process (huggingface_hub reads its settings at
    import) and for the CLI in subprocesses (the environment)."""
    from huggingface_hub import constants
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.slow
def test_load_adapter_from_the_hub_cache_offline(tmp_path, hub_cache):
    model = scaleshift.apply(make_model("vit"), "ssf")
    perturb_trainable(model)
    scaleshift.save_adapter(model, tmp_path / "a")
    hub_repo(hub_cache, "someone/digits-ssf", {n: tmp_path / "a" / n for n in (CONFIG_NAME, WEIGHTS_NAME)})
    x = images(2)
    with torch.no_grad():
        for repo in ("someone/digits-ssf", "hf-hub:someone/digits-ssf"):
            loaded = scaleshift.load_adapter(make_model("vit"), repo).eval()(x)
            torch.testing.assert_close(loaded, model.eval()(x))
    with pytest.raises(ScaleshiftError, match="neither a local directory nor available as a Hub "
                                              "repo.*HF_HUB_OFFLINE"):
        scaleshift.load_adapter(make_model("vit"), "someone/not-cached")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "scaleshift.cli", "adapters", "--json"]
    proc = subprocess.run(command + ["someone/digits-ssf"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["method"] == "ssf"
    proc = subprocess.run(command + ["someone/not-cached"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'someone/not-cached' is neither a local directory" in proc.stderr


@pytest.mark.slow
def test_an_unreachable_hub_is_read_from_the_cache_at_once(tmp_path, hub_cache, monkeypatch):
    import time

    from huggingface_hub import constants

    from scaleshift import models
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)   # not set: the Hub would be asked
    monkeypatch.setattr(models, "_hub_reachable", lambda endpoint, timeout=3.0: False)
    model = scaleshift.apply(make_model("vit"), "ssf")
    scaleshift.save_adapter(model, tmp_path / "a")
    hub_repo(hub_cache, "someone/digits-ssf", {n: tmp_path / "a" / n for n in (CONFIG_NAME, WEIGHTS_NAME)})
    scaleshift.load_adapter(make_model("vit"), "someone/digits-ssf")            # from the cache
    started = time.time()
    for call, name in ((lambda: scaleshift.load_adapter(make_model("vit"), "someone/not-cached"), "adapter"),
                       (lambda: scaleshift.create_model("hf-hub:someone/no-model", 3), "hf-hub model"),
                       (lambda: scaleshift.create_model("vit_tiny_patch16_224", 3, pretrained=True), "timm weights")):
        with pytest.raises(ScaleshiftError, match="cannot be reached from this machine"):
            call()
        assert constants.HF_HUB_OFFLINE is False, name                        # as it was
    assert time.time() - started < 60                                         # no retries with back-off


def timm_folder(directory, num_classes=7, seed=11, **kwargs):
    """A timm model folder as the Hub holds one (config.json + model.safetensors), written by
    timm itself from a randomly initialised vit_tiny_patch16_224 tagged augreg_in21k (`kwargs`,
    e.g. a smaller depth, go to config.json's model_args)."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224.augreg_in21k", num_classes=num_classes, **kwargs)
    timm.models.save_for_hf(model, str(directory), safe_serialization=True)
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    return model


@pytest.mark.slow
def test_hf_hub_model_names_resolve_from_the_cache_and_serve_again(tmp_path, hub_cache):
    source = timm_folder(tmp_path / "folder")
    hub_repo(hub_cache, HUB_TIMM, {n: tmp_path / "folder" / n for n in ("config.json", "model.safetensors")})
    name = f"hf-hub:{HUB_TIMM}"
    model = scaleshift.create_model(name, num_classes=5, pretrained=True)
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    identity = identity_of(model)
    assert (identity["name"], identity["architecture"], identity["source"], identity["tag"]) == \
        (name, "vit_tiny_patch16_224", "hub", "augreg_in21k")
    scaleshift.apply(model, "ssf")
    perturb_trainable(model)
    scaleshift.save_adapter(model, tmp_path / "a")
    meta = read_adapter_config(tmp_path / "a")
    assert meta["eval_transform"]["input_size"] == [3, 224, 224]
    served = scaleshift.load_adapter(backbone_for(meta), tmp_path / "a").eval()   # rebuilt from the cache
    x = images(1, size=224)
    with torch.no_grad():
        assert (served(x) - model.eval()(x)).abs().max() <= 1e-5
    # the name form is accepted wherever a model name is
    make_config(dict(model=name, val_split="val200")).validate()
    assert main(["params", "--model", name, "--method", "ssf", "--num-classes", "5", "--json"]) == 0
    with pytest.raises(ScaleshiftError, match="hf-hub: takes a Hub repo id"):
        scaleshift.create_model("hf-hub:no-slash", 5)
    with pytest.raises(ScaleshiftError, match="could not build 'hf-hub:timm/not_cached'.*Hub cache"):
        scaleshift.create_model("hf-hub:timm/not_cached", 5, pretrained=True)


def test_local_dir_model_names_resolve_and_record_the_weights(tmp_path):
    source = timm_folder(tmp_path / "folder", **KWARGS)
    name = f"local-dir:{tmp_path / 'folder'}"
    model = scaleshift.create_model(name, num_classes=5, pretrained=True)
    identity = identity_of(model)
    assert identity["source"] == "file" and identity["architecture"] == "vit_tiny_patch16_224"
    assert identity["kwargs"]["depth"] == 2     # the folder's model_args
    assert identity["weights_sha256"] == file_sha256(tmp_path / "folder" / "model.safetensors")
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"],
                       source.state_dict()["blocks.0.attn.qkv.weight"])
    scaleshift.apply(model, "bias")
    scaleshift.save_adapter(model, tmp_path / "a")
    rebuilt = backbone_for(read_adapter_config(tmp_path / "a"))
    assert identity_of(rebuilt) == identity
    timm_folder(tmp_path / "other", seed=12, **KWARGS)     # other weights in the same place
    (tmp_path / "folder" / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(ScaleshiftError, match="does not hold the weights the backbone was built from"):
        backbone_for(read_adapter_config(tmp_path / "a"))
    with pytest.raises(ScaleshiftError, match="config.json not found"):
        make_config(dict(model=f"local-dir:{tmp_path / 'nothing'}", val_split="val200")).validate()


# ----------------------------------------------------------------------------- serving
@pytest.fixture(scope="module")
def fgvc_run(tmp_path_factory, backbone_file):
    """An SSF run evaluated with a centre crop (augment=fgvc), on a dataset with class names."""
    return train_run(tmp_path_factory.mktemp("fgvc") / "run", backbone_file, "dataset=patch_textures",
                     "augment=fgvc", "method=ssf")


@pytest.mark.slow
def test_predict_uses_the_runs_eval_transform_and_prints_class_names(fgvc_run, tmp_path, capsys):
    from PIL import Image
    # a wide picture whose sides (which the centre crop drops) differ from its middle
    pixels = torch.full((32, 96, 3), 128, dtype=torch.uint8)
    pixels[:, :32] = torch.randint(0, 256, (32, 32, 3), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8)
    pixels[:, 64:] = 255
    picture = Image.fromarray(pixels.numpy())
    picture.save(tmp_path / "wide.png")
    adapter = fgvc_run / "adapter"
    capsys.readouterr()
    assert main(["predict", "--adapters", str(adapter), "--top-k", "20", "--device", "cpu",
                 str(tmp_path / "wide.png")]) == 0
    rows = json.loads(capsys.readouterr().out)[0]["tasks"][str(adapter)]
    _, model = load_run(fgvc_run)
    meta = read_adapter_config(adapter)
    assert [r["label"] for r in rows] == [meta["class_names"][r["index"]] for r in rows]
    with torch.no_grad():
        def probs(transform):
            return model.eval()(transform(picture)[None])[0].softmax(0)
        crop = probs(build_transform("fgvc", model, False, 32))
        squash = probs(build_transform("vtab", model, False, 32))
    by_index = {r["index"]: r["p"] for r in rows}
    assert max(abs(by_index[i] - float(crop[i])) for i in by_index) <= 1e-4
    assert max(abs(by_index[i] - float(squash[i])) for i in by_index) > 1e-3   # not the VTAB one


@pytest.mark.slow
def test_predict_refuses_an_unavailable_device(fgvc_run, tmp_path, capsys):
    from PIL import Image
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["predict", "--adapters", str(fgvc_run / "adapter"), "--device", "cuda",
                 str(tmp_path / "x.png")]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err

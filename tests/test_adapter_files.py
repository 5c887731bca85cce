"""Adapter directories: what they hold, the refusals, the size on ViT-B."""
import json

import pytest
import torch
from safetensors.torch import load_file

import scaleshift
from scaleshift.adapter_files import CONFIG_NAME, WEIGHTS_NAME
from scaleshift.errors import ScaleshiftError
from scaleshift.merge import perturb_trainable

from conftest import make_model


@pytest.fixture
def saved(tmp_path):
    model = scaleshift.apply(make_model("vit"), "ssf", layers=1)
    perturb_trainable(model)
    scaleshift.save_adapter(model, tmp_path / "a")
    return model, tmp_path / "a"


def test_files_hold_only_method_parameters_and_head(saved):
    model, directory = saved
    config = json.loads((directory / CONFIG_NAME).read_text())["scaleshift"]
    assert config["method"] == "ssf" and config["num_classes"] == 5
    assert config["options"]["layers"] == 1 and config["model_name"] == "vit_tiny_patch16_224"
    tensors = load_file(str(directory / WEIGHTS_NAME))
    assert set(tensors) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(k.startswith("head.") or ".ssf_" in k for k in tensors)


def test_loading_onto_another_backbone_is_refused(saved):
    _, directory = saved
    other = make_model("vit", seed=123)      # same architecture, other weights
    with pytest.raises(scaleshift.ScaleshiftError, match="fingerprint"):
        scaleshift.load_adapter(other, directory)


def test_loading_onto_another_class_count_is_refused(saved):
    _, directory = saved
    with pytest.raises(scaleshift.ScaleshiftError, match="5-class head"):
        scaleshift.load_adapter(make_model("vit", num_classes=7), directory)


def test_loading_onto_another_architecture_is_refused(saved):
    _, directory = saved
    with pytest.raises(scaleshift.ScaleshiftError, match="trained on 'vit_tiny_patch16_224'"):
        scaleshift.load_adapter(make_model("swin"), directory)


def test_loading_onto_other_options_is_refused(saved):
    _, directory = saved
    model = scaleshift.apply(make_model("vit"), "ssf", layers=2)
    with pytest.raises(scaleshift.ScaleshiftError, match="applied"):
        scaleshift.load_adapter(model, directory)


def test_tampered_weights_are_refused(saved):
    _, directory = saved
    data = bytearray((directory / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0xFF
    (directory / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(scaleshift.ScaleshiftError, match="checksum"):
        scaleshift.load_adapter(make_model("vit"), directory)


def test_missing_directory_names_the_file(tmp_path):
    with pytest.raises(scaleshift.ScaleshiftError, match="adapter_config.json not found"):
        scaleshift.load_adapter(make_model("vit"), tmp_path / "nothing")


def test_overwrite_is_atomic_and_leaves_no_temporaries(saved):
    model, directory = saved
    scaleshift.save_adapter(model, directory)
    assert sorted(p.name for p in directory.parent.iterdir()) == ["a"]
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_save_needs_a_method():
    with pytest.raises(scaleshift.ScaleshiftError, match="method applied"):
        scaleshift.save_adapter(make_model("vit"), "unused")


@pytest.mark.slow
def test_batchnorm_running_stats_travel_with_the_adapter(tmp_path):
    model = scaleshift.create_model("test_resnet", num_classes=3)
    scaleshift.apply(model, "ssf")
    model.train()
    model(torch.randn(4, 3, 64, 64))                 # updates the running statistics
    scaleshift.save_adapter(model, tmp_path / "r")
    fresh = scaleshift.create_model("test_resnet", num_classes=3)
    frozen = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()
              if "ssf_" not in k and "running_" not in k and not k.startswith("fc.")}
    fresh.load_state_dict(frozen, strict=False)      # same frozen backbone, fresh statistics
    scaleshift.load_adapter(fresh, tmp_path / "r")
    model.eval(), fresh.eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(fresh(x), model(x))


@pytest.mark.slow
def test_vit_base_cifar100_ssf_adapter_is_under_1_2_mb(tmp_path):
    model = scaleshift.create_model("vit_base_patch16_224", num_classes=100)
    scaleshift.apply(model, "ssf")
    scaleshift.save_adapter(model, tmp_path / "vitb")
    size = sum(p.stat().st_size for p in (tmp_path / "vitb").iterdir())
    assert size < 1.2e6, size


def test_save_adapter_replaces_only_a_folder_it_wrote(tmp_path):
    model = scaleshift.apply(make_model("vit"), "ssf", layers=1)
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ScaleshiftError, match="not an adapter scaleshift wrote"):
        scaleshift.save_adapter(model, mine)
    assert (mine / "notes.txt").read_text() == "mine" and (mine / "sub").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ScaleshiftError, match="is a file"):
        scaleshift.save_adapter(model, tmp_path / "file")
    peft_like = tmp_path / "peft"   # a PEFT adapter of the user's: same file names, no record
    peft_like.mkdir()
    (peft_like / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(ScaleshiftError, match="not an adapter scaleshift wrote"):
        scaleshift.save_adapter(model, peft_like)
    ours = scaleshift.save_adapter(model, tmp_path / "ours")
    assert scaleshift.save_adapter(model, ours) == ours          # its own adapter: replaced
    (tmp_path / "empty").mkdir()
    scaleshift.save_adapter(model, tmp_path / "empty")


def test_save_adapter_refuses_what_it_could_not_load_again(tmp_path):
    model = scaleshift.apply(make_model("vit"), "ssf", layers=1)
    with pytest.raises(ScaleshiftError, match="eval_transform"):
        scaleshift.save_adapter(model, tmp_path / "a", eval_transform={"input_size": -1})
    with pytest.raises(ScaleshiftError, match="not one string"):
        scaleshift.save_adapter(model, tmp_path / "a", class_names="abcde")
    with pytest.raises(ScaleshiftError, match="needs the model in float32.*torch.bfloat16"):
        scaleshift.save_adapter(model.to(torch.bfloat16), tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_the_api_names_a_wrong_model_argument(tmp_path):
    from scaleshift.multitask import MultiTaskModel
    for call in (lambda: scaleshift.apply(None, "ssf"), lambda: scaleshift.apply("vit", "ssf"),
                 lambda: scaleshift.merge(None), lambda: scaleshift.save_adapter(None, tmp_path / "a"),
                 lambda: scaleshift.load_adapter(None, tmp_path / "a"),
                 lambda: scaleshift.print_trainable_parameters(None)):
        with pytest.raises(ScaleshiftError, match="takes a torch.nn.Module"):
            call()
    with torch.device("meta"):
        meta = scaleshift.apply(make_model("vit"), "ssf", layers=1)
    for call in (lambda: scaleshift.merge(meta), lambda: scaleshift.save_adapter(meta, tmp_path / "a")):
        with pytest.raises(ScaleshiftError, match="meta device"):
            call()
    with pytest.raises(ScaleshiftError, match="takes a list of adapter folders"):
        MultiTaskModel.from_adapters(str(tmp_path / "a"))


def test_a_missing_weights_file_says_where_it_was_and_how_to_serve_it(tmp_path, monkeypatch):
    from conftest import TINY
    from safetensors.torch import save_file

    from scaleshift.models import build_model, identity_of
    name, kwargs, _ = TINY["vit"]
    save_file(make_model("vit").state_dict(), str(tmp_path / "bb.safetensors"))
    monkeypatch.chdir(tmp_path)
    model = scaleshift.create_model(name, num_classes=5, pretrained="bb.safetensors", **kwargs)
    identity = dict(identity_of(model))
    assert identity["weights_file"] == str(tmp_path / "bb.safetensors")   # recorded absolute
    monkeypatch.chdir(tmp_path.parent)
    assert build_model(identity, 5) is not None                          # found from elsewhere
    with pytest.raises(ScaleshiftError, match="run the command there.*--pretrained FILE"):
        build_model(dict(identity, weights_file="bb.safetensors"), 5)      # an older, relative record

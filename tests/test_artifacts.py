"""Issue 22, items 3 and 4: the merged run in timm's folder format (timm.create_model
("local-dir:...") gives the same logits), class names and eval transform in every export, and
predict / eval on any artifact."""
import json

import pytest
import timm
import torch

from scaleshift.cli import main
from scaleshift.runs import load_run

KWARGS = "{img_size: 32, patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}"


def train(out, *extra):
    assert main(["train", f"model_kwargs={KWARGS}", "dataset=digits", "train_split=train800",
                 "val_split=val200", "test_split=test", "input_size=32", "batch_size=50",
                 "epochs=1", "max_steps_per_epoch=6", "lr=3e-2", "test_limit=40",
                 f"out_dir={out}", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def ssf_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("ssf") / "run")


def images(batch=4):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_merge_writes_timm_folder_that_timm_loads_with_the_same_logits(ssf_run, capsys):
    assert main(["merge", str(ssf_run)]) == 0
    folder = ssf_run / "merged"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 10
    assert config["label_names"] == [str(d) for d in range(10)]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["crop_mode"] == "squash"        # the run's eval transform
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    _, ours = load_run(ssf_run)
    with torch.no_grad():
        torch.testing.assert_close(theirs(images()), ours.eval()(images()), atol=1e-5, rtol=1e-5)
    data = timm.data.resolve_data_config(model=theirs)
    assert data["input_size"] == (3, 32, 32) and data["crop_mode"] == "squash"
    assert main(["merge", str(ssf_run)]) == 0                       # its own folder: replaced


def test_export_refuses_an_out_scaleshift_did_not_write(ssf_run, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    (tmp_path / "mine.onnx").write_text("keep")
    for argv in (["merge", str(ssf_run), "--out", str(tmp_path / "mine")],
                 ["export", str(ssf_run), "--format", "onnx", "--out", str(tmp_path / "mine.onnx")]):
        assert main(argv) == 2
        assert "was not written by scaleshift" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert (tmp_path / "mine.onnx").read_text() == "keep"


def test_onnx_export_carries_class_names_and_eval_transform(ssf_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    assert main(["export", str(ssf_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["class_names"] == [str(d) for d in range(10)]
    assert props["eval_transform"]["input_size"] == [3, 32, 32]
    assert props["scaleshift"]["architecture"] == "vit_tiny_patch16_224"

"""Issue 22, items 3 and 4: the merged run in timm's folder format (timm.create_model
("local-dir:...") gives the same logits), class names and eval transform in every export, and
predict / eval on any artifact."""
import json

import pytest
import timm
import torch

from scaleshift.cli import main
from scaleshift.runs import load_run

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow

def train(out, *extra):
    """scaleshift's shipped pretrained ConvNeXt (32 px): a few steps already predict varied labels."""
    assert main(["train", "model=scaleshift_convnext32", "pretrained=true", "dataset=digits",
                 "train_split=train800", "val_split=val200", "test_split=test", "batch_size=50",
                 "epochs=1", "max_steps_per_epoch=6", "lr=1e-2", "test_limit=40",
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
    _, ours = load_run(ssf_run)
    assert config["architecture"] == ours.pretrained_cfg["architecture"] and config["num_classes"] == 10
    assert config["label_names"] == [str(d) for d in range(10)]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["crop_mode"] == "squash"        # the run's eval transform
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(images()), ours.eval()(images()), atol=1e-5, rtol=1e-5)
    data = timm.data.resolve_data_config(model=theirs)
    assert data["input_size"] == (3, 32, 32) and data["crop_mode"] == "squash"
    assert main(["merge", str(ssf_run)]) == 2                       # its own folder: kept ...
    assert "--overwrite" in capsys.readouterr().err
    assert main(["merge", str(ssf_run), "--overwrite"]) == 0        # ... unless asked to replace it


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


def test_file_exports_keep_their_suffix(ssf_run, tmp_path, capsys):
    # eval and predict recognise an exported file by its suffix, so an --out without it would
    # write a file nothing reads back
    for fmt, out, fix in (("onnx", "model", "model.onnx"), ("safetensors", "model.bin", "model.safetensors")):
        assert main(["export", str(ssf_run), "--format", fmt, "--out", str(tmp_path / out)]) == 2
        assert f"pass --out {tmp_path / fix}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_carries_class_names_and_eval_transform(ssf_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    assert main(["export", str(ssf_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["class_names"] == [str(d) for d in range(10)]
    assert props["eval_transform"]["input_size"] == [3, 32, 32]
    assert props["scaleshift"]["base_model"]["name"] == "scaleshift_convnext32"


# ----------------------------------------------------------------------------- item 4
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    pytest.importorskip("peft")
    return train(tmp_path_factory.mktemp("lora") / "run", "method=lora", "method_options={rank: 2}")


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
    """The first 40 test images of digits as PNG files (lossless: predict reads what eval reads)."""
    from scaleshift.data import build_dataset
    folder = tmp_path_factory.mktemp("images") / "digits"
    (folder / "more").mkdir(parents=True)
    data = build_dataset("digits", split="test")
    for i in range(40):
        (folder if i < 30 else folder / "more").joinpath(f"{i:03d}.png").parent.mkdir(exist_ok=True)
        data[i][0].save(folder / ("" if i < 30 else "more") / f"{i:03d}.png")
    return folder


def eval_labels(run):
    """The top-1 labels eval's own pipeline gives (the run's model, data and transform)."""
    from scaleshift.runs import eval_dataset
    cfg, model = load_run(run)
    data = eval_dataset(cfg, model, "test")
    with torch.no_grad():
        batch = torch.stack([data[i][0] for i in range(40)])
        return [str(int(c)) for c in model.eval()(batch).argmax(1)]


def predicted(capsys, artifact, *images):
    assert main(["predict", "--model", str(artifact), *map(str, images), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["image"].rsplit("/", 1)[1]: r["top"][0]["label"] for r in rows}
    return [by_name[f"{i:03d}.png"] for i in range(40)]


def test_predict_on_every_artifact_gives_evals_top1_labels(ssf_run, lora_run, test_images,
                                                           tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["merge", str(ssf_run), "--out", str(tmp_path / "merged")]) == 0
    assert main(["merge", str(ssf_run), "--out", str(tmp_path / "m.safetensors")]) == 0
    assert main(["export", str(ssf_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    expected = eval_labels(ssf_run)
    assert len(set(expected)) > 1                                # a trained model, not a constant
    for artifact in (ssf_run, ssf_run / "adapter", tmp_path / "merged", tmp_path / "m.safetensors",
                     tmp_path / "m.onnx"):
        assert predicted(capsys, artifact, test_images) == expected, artifact
    assert predicted(capsys, lora_run / "adapter", test_images / "more", *sorted(
        test_images.glob("*.png"))) == eval_labels(lora_run)


def test_eval_takes_any_artifact_and_data_overrides(ssf_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["eval", str(ssf_run)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 40    # the run's test_limit, as reported
    assert main(["eval", str(ssf_run), "--split", "test"]) == 0  # a split named: all of it
    run = json.loads(capsys.readouterr().out)
    assert main(["merge", str(ssf_run), "--out", str(tmp_path / "merged")]) == 0
    assert main(["export", str(ssf_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    for artifact in (tmp_path / "merged", tmp_path / "m.onnx", ssf_run / "adapter"):
        assert main(["eval", str(artifact), "--dataset", "digits"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["count"] == run["count"] and got["top1"] == pytest.approx(run["top1"])
    # the run on another dataset of the same class count, by dataset= (the option grammar)
    assert main(["eval", str(ssf_run), "dataset=digits_96", "split=test"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 597


@pytest.mark.parametrize("argv, message", [
    (["eval", "{merged}"], "pass dataset=NAME"),
    (["eval", "{run}", "dataset=faces"], "has 2 classes but"),
    (["eval", "{run}", "data_root=/no/such/folder"], "is not an existing folder"),
    (["predict", "--model", "{run}", "/no/such/image.png"], "image /no/such/image.png not found"),
    (["predict", "--model", "{tmp}", "{tmp}"], "is not an artifact scaleshift reads"),
    (["predict", "{tmp}"], "predict takes --model ARTIFACT"),
])
def test_bad_artifacts_and_data_exit_2(argv, message, ssf_run, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"")
    merged = tmp_path / "m.safetensors"
    if "{merged}" in argv:
        assert main(["merge", str(ssf_run), "--out", str(merged)]) == 0
    argv = [a.format(run=ssf_run, merged=merged, tmp=tmp_path) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_predict_prints_a_table_or_csv(ssf_run, test_images, capsys):
    image = test_images / "000.png"
    assert main(["predict", "--model", str(ssf_run), str(image), "--top-k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("image") and table[1].startswith(str(image)) and len(table) == 2
    assert main(["predict", "--model", str(ssf_run), str(image), "--top-k", "2", "--csv"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0] == "image,rank,label,index,p" and len(csv) == 3

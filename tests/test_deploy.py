"""Deployment: export (safetensors loadable by timm alone, ONNX with the plain op counts and
onnxruntime parity), many tasks on one backbone, adapter sizes."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import scaleshift
from scaleshift.cli import main
from scaleshift.runs import load_run
from scaleshift.multitask import MultiTaskModel

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow

KWARGS = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
TASKS = ("digits", "faces", "struct_count")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(5)
    backbone = scaleshift.create_model("vit_tiny_patch16_224", 0, **KWARGS)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(root / "backbone.safetensors"))
    kwargs = "{img_size: 32, patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}"
    for task in TASKS:
        assert main(["train", f"model_kwargs={kwargs}", f"pretrained={root / 'backbone.safetensors'}",
                     f"dataset={task}", "train_split=train800", "val_split=val200", "test_split=test",
                     "input_size=32", "batch_size=50", "epochs=1", "max_steps_per_epoch=4",
                     "lr=1e-2", f"out_dir={root / task}"]) == 0
    return root


def test_safetensors_export_loads_with_timm_alone(runs):
    assert main(["export", str(runs / "digits"), "--format", "safetensors"]) == 0
    code = ("import json, sys, timm, torch; from safetensors.torch import load_file; "
            "assert 'scaleshift' not in sys.modules; "
            f"m = timm.create_model('vit_tiny_patch16_224', num_classes=10, **{KWARGS!r}); "
            f"m.load_state_dict(load_file('{runs / 'digits' / 'merged.safetensors'}'), strict=True); "
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_onnx_export_has_the_plain_op_counts_and_matches_torch(runs):
    assert main(["export", str(runs / "digits"), "--format", "onnx"]) == 0
    report = json.loads((runs / "digits" / "merged.json").read_text())
    assert report["same_ops_as_plain"] and report["op_counts"] == report["plain_op_counts"]
    assert report["max_abs_diff_vs_torch"] <= 1e-4
    # one graph for any batch size: parity at batch 1 and 8
    assert report["dynamic_batch"] and sorted(map(int, report["max_abs_diff_by_batch"])) == [1, 8]
    assert max(report["max_abs_diff_by_batch"].values()) <= 1e-4


def test_three_tasks_in_one_batch_equal_three_merged_models(runs):
    adapters = [runs / t / "adapter" for t in TASKS]
    mt = MultiTaskModel.from_adapters(adapters, pretrained=runs / "backbone.safetensors")
    merged = [load_run(runs / t, merged=True)[1].eval() for t in TASKS]
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    task_ids = torch.tensor([0, 1, 2, 2, 1, 0])
    outputs = mt(images, task_ids)
    with torch.no_grad():
        for i, t in enumerate(task_ids.tolist()):
            expected = merged[t](images[i:i + 1])[0]
            assert outputs[i].shape == expected.shape
            torch.testing.assert_close(outputs[i], expected, rtol=1e-4, atol=1e-5)
            assert outputs[i].argmax() == expected.argmax()


def test_predict_and_adapters_commands(runs, tmp_path, capsys):
    from PIL import Image
    paths = []
    for i in range(2):
        path = tmp_path / f"im{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(path)
        paths.append(str(path))
    adapters = ",".join(str(runs / t / "adapter") for t in TASKS)
    capsys.readouterr()
    assert main(["predict", "--adapters", adapters, "--pretrained", str(runs / "backbone.safetensors"),
                 "--input-size", "32", *paths]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [len(o["tasks"]) for o in out] == [3, 3]
    folder = tmp_path / "many"   # a folder, as --model takes it, past one 32-image batch
    folder.mkdir()
    for i in range(34):
        Image.new("RGB", (32, 32), (7 * i, 90, 200 - 5 * i)).save(folder / f"im{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    assert main(["predict", "--adapters", adapters, "--pretrained", str(runs / "backbone.safetensors"),
                 "--input-size", "32", str(folder), paths[0]]) == 0
    many = json.loads(capsys.readouterr().out)
    assert [o["image"] for o in many] == [str(folder / f"im{i:02d}.png") for i in range(34)] + [paths[0]]
    assert many[-1]["tasks"] == out[0]["tasks"]
    assert main(["adapters", *[str(runs / t / "adapter") for t in TASKS], "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(0 < r["fraction"] < 0.2 for r in rows)
    assert main(["predict", "--adapters", adapters, "--pretrained", str(runs / "backbone.safetensors"),
                 "--input-size", "32", "--csv", paths[0]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "image,task,rank,label,index,p" and len(lines) == 1 + sum(map(len, out[0]["tasks"].values()))
    twice = f"{runs / TASKS[0] / 'adapter'},{runs / TASKS[0] / 'adapter'}"
    assert main(["predict", "--adapters", twice, "--pretrained", str(runs / "backbone.safetensors"), paths[0]]) == 2
    assert "are the same adapter" in capsys.readouterr().err
    assert main(["adapters", str(runs / TASKS[0] / "adapter"), str(runs / TASKS[0] / "adapter")]) == 2
    assert "are the same adapter" in capsys.readouterr().err


def test_multitask_forward_refuses_bad_task_ids_and_an_empty_batch(runs):
    mt = MultiTaskModel.from_adapters([runs / t / "adapter" for t in TASKS],
                                      pretrained=runs / "backbone.safetensors")
    images = torch.zeros(2, 3, 32, 32)
    for ids, message in ((torch.tensor([0.9, 1.7]), "must be integers"), (torch.tensor([0, 3]), "one id in 0..2"),
                         (torch.tensor([0]), "one id in 0..2")):
        with pytest.raises(scaleshift.ScaleshiftError, match=message):
            mt(images, ids)
    with pytest.raises(scaleshift.ScaleshiftError, match="empty batch"):
        mt(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long))
    with pytest.raises(scaleshift.ScaleshiftError, match=r"does not take images of shape \(3, 64, 64\)"):
        mt(torch.zeros(1, 3, 64, 64), torch.zeros(1, dtype=torch.long))


def test_multitask_refuses_mixed_backbones(runs, tmp_path, capsys):
    other = scaleshift.apply(scaleshift.create_model("vit_tiny_patch16_224", 4, **KWARGS), "ssf")
    scaleshift.save_adapter(other, tmp_path / "other")
    with pytest.raises(scaleshift.ScaleshiftError, match="backbone_fingerprint"):
        MultiTaskModel.from_adapters([runs / "digits" / "adapter", tmp_path / "other"],
                                     pretrained=runs / "backbone.safetensors")
    capsys.readouterr()
    assert main(["adapters", str(runs / "digits" / "adapter"), str(tmp_path / "other")]) == 0
    assert "2 different backbones" in capsys.readouterr().out


def test_a_run_whose_backbone_file_moved_is_served_with_pretrained(tmp_path, capsys):
    from PIL import Image
    torch.manual_seed(6)
    backbone = scaleshift.create_model("vit_tiny_patch16_224", 0, **KWARGS)
    (tmp_path / "old").mkdir()
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(tmp_path / "old" / "bb.safetensors"))
    run, image = tmp_path / "run", tmp_path / "x.png"
    Image.new("RGB", (32, 32), (40, 90, 200)).save(image)
    kwargs = "{img_size: 32, patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}"
    assert main(["train", f"model_kwargs={kwargs}", f"pretrained={tmp_path / 'old' / 'bb.safetensors'}",
                 "dataset=digits", "train_split=train800", "val_split=val200", "test_split=test",
                 "test_limit=40", "input_size=32", "batch_size=50", "epochs=1", "max_steps_per_epoch=2",
                 f"out_dir={run}"]) == 0
    reported = json.loads((run / "results.json").read_text())
    moved = tmp_path / "moved.safetensors"
    (tmp_path / "old" / "bb.safetensors").rename(moved)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    assert "--pretrained FILE" in capsys.readouterr().err
    assert main(["eval", str(run), "--pretrained", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(reported["reported"]["top1"])
    for argv in (["merge", str(run), "--out", str(tmp_path / "merged")],
                 ["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")],
                 ["predict", "--model", str(run), str(image)],
                 ["predict", "--model", str(run / "adapter"), str(image)],
                 ["eval", str(run / "adapter"), "--dataset", "digits", "--split", "test"]):
        assert main([*argv, "--pretrained", str(moved)]) == 0, argv
    capsys.readouterr()
    save_file({k: torch.zeros_like(v) for k, v in backbone.state_dict().items()}, str(tmp_path / "other.safetensors"))
    for pretrained, message in ((tmp_path / "other.safetensors", "sha256 differs"),
                                (tmp_path / "old", "is a folder"),
                                (tmp_path / "nosuch.safetensors", "nosuch.safetensors not found")):
        assert main(["eval", str(run), "--pretrained", str(pretrained)]) == 2
        assert message in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "m.safetensors"), "--pretrained", str(moved), str(image)]) == 2
    assert "drop --pretrained" in capsys.readouterr().err

"""The file system as hostile input, where a command line alone cannot set it up: --overwrite
of scaleshift's own outputs, path values taken literally, a read-only or full disk, Ctrl-C."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scaleshift.cli import main
from scaleshift.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model_kwargs={img_size: 32, patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
        "dataset=digits", "train_split=train800", "val_split=val200", "test_split=test",
        "input_size=32", "batch_size=50", "max_steps_per_epoch=1"]


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fs") / "run"
    assert main(["train", *TINY, "epochs=1", f"out_dir={out}"]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("argv, target", [
    (["export", "{run}", "--format", "safetensors", "--out", "{tmp}/m.safetensors"], "m.safetensors"),
    (["merge", "{run}", "--out", "{tmp}/merged"], "merged"),
    (["report", "{run}", "--out", "{tmp}/rep"], "rep"),
], ids=["export", "merge", "report"])
def test_an_earlier_output_is_replaced_only_with_overwrite(finished_run, tmp_path, capsys, argv, target):
    argv = [a.replace("{run}", str(finished_run)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 0
    first = tree(tmp_path)
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert tree(tmp_path) == first                     # refused: byte-identical
    assert main([*argv, "--overwrite"]) == 0           # scaleshift's own: replaced on request
    assert (tmp_path / target).exists()


@pytest.mark.parametrize("key", ["out_dir", "data_root", "pretrained"])
@pytest.mark.parametrize("value", ["/x/hash #comment", "/x/new\nline", "/x/a: b", "/x/[1, 2]", "null"])
def test_path_values_are_taken_literally(key, value):
    cfg = load_recipe(None, ["protocol=official", f"{key}={value}"])
    assert getattr(cfg, key) == value


def test_pretrained_true_and_false_still_choose_the_weights():
    assert load_recipe(None, ["protocol=official", "pretrained=true"]).pretrained is True
    assert load_recipe(None, ["protocol=official", "pretrained=False"]).pretrained is False


def test_a_flag_path_is_literal_too():
    from scaleshift.config import flags_to_assignments
    tokens = flags_to_assignments(["--out-dir", "runs/a #b"], set())
    assert load_recipe(None, ["protocol=official", *tokens]).out_dir == "runs/a #b"


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_an_unwritable_out_dir_is_one_line(tmp_path, capsys, monkeypatch, code):
    """A read-only mount or a folder without write permission (simulated: tests may run as
    root, whom chmod does not stop)."""
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *args, **kwargs)
    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(["train", *TINY, "epochs=1", f"out_dir={tmp_path / 'ro' / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "cannot create the run folder" in err and os.strerror(code) in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 555 folder anyway; "
                    "test_an_unwritable_out_dir_is_one_line simulates it")
def test_a_chmod_555_parent_is_one_line(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert main(["train", *TINY, "epochs=1", f"out_dir={parent / 'run'}"]) == 2
        assert "cannot create the run folder" in capsys.readouterr().err
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_complete_checkpoint(tmp_path, capsys, monkeypatch):
    """The disk fills while epoch 2's checkpoint is written: exit 2 naming it, the epoch-1
    checkpoint byte-identical, no temporary file left, and --resume finishes the run."""
    out = tmp_path / "run"
    argv = ["train", *TINY, "epochs=2", f"out_dir={out}"]
    real_save = torch.save
    saved = {}

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:   # the second checkpoint
            saved["epoch1"] = (out / "checkpoint.pt").read_bytes()
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "checkpoint.pt (epoch 1)" in err and "--resume" in err
    assert (out / "checkpoint.pt").read_bytes() == saved["epoch1"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(torch, "save", real_save)
    assert main([*argv, "--resume"]) == 0
    assert (out / "results.json").is_file()


@pytest.mark.slow
def test_ctrl_c_says_where_the_checkpoint_is_and_exits_130(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "scaleshift.cli", "train", *TINY, "epochs=50",
                             f"out_dir={out}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "checkpoint.pt").exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    line = err.strip().splitlines()[-1]
    assert "interrupted" in line and str(out / "checkpoint.pt") in line and "--resume" in line
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] >= 1 and len(state["history"]) == state["epoch"]


def test_a_refused_training_removes_only_what_it_wrote(tmp_path, monkeypatch):
    """A file put into the (empty) out_dir by someone else while the training starts stays."""
    import scaleshift.engine as engine
    from scaleshift.errors import ScaleshiftError
    out = tmp_path / "empty"
    out.mkdir()

    def refuse(t):
        (out / "notes.txt").write_text("mine")
        raise ScaleshiftError("refused on purpose")
    monkeypatch.setattr(engine, "build_data", refuse)
    assert main(["train", *TINY, "epochs=1", f"out_dir={out}"]) == 2
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

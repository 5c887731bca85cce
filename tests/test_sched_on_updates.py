"""sched_on_updates (issue 22, item 7): warm-up and cosine counted in optimizer updates, as
timm's --sched-on-updates, instead of once per epoch (the default, as the official recipes)."""
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaleshift.cli import main

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LR, MIN_LR, WARMUP_LR = 3e-3, 1e-8, 1e-7
TINY = ["model_kwargs={img_size: 32, patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}",
        "dataset=digits", "train_split=train800", "val_split=val200", "test_split=test",
        "test_limit=50", "input_size=32", "batch_size=50", "max_steps_per_epoch=4",
        f"lr={LR}", f"min_lr={MIN_LR}", f"warmup_lr={WARMUP_LR}", "warmup_epochs=1",
        "log_every=100"]


def lrs(tmp_path, name, *extra, epochs=2):
    assert main(["train", *TINY, f"epochs={epochs}", f"out_dir={tmp_path / name}", *extra]) == 0
    rows = (tmp_path / name / "log.jsonl").read_text().splitlines()
    return [json.loads(row)["lr"] for row in rows]


def cosine(t, total):
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * t / total))


def test_per_epoch_warmup_spends_the_first_epoch_at_warmup_lr_by_default(tmp_path):
    # the lr each epoch ends with: epoch 1 all at warmup_lr, epoch 2 at cosine(1 of 2 epochs)
    assert lrs(tmp_path, "epochs") == pytest.approx([WARMUP_LR, cosine(1, 2)])


def test_sched_on_updates_warms_up_over_the_first_epochs_updates(tmp_path):
    # 4 updates per epoch: warm-up ends after update 4, and each epoch ends with the lr of the
    # next update: cosine at update 4 and 8 of 8
    assert lrs(tmp_path, "updates", "sched_on_updates=true") == pytest.approx(
        [cosine(4, 8), cosine(8, 8)])


def test_sched_on_updates_resumes_exactly_after_a_kill(tmp_path):
    args = [*TINY, "epochs=4", "sched_on_updates=true", f"out_dir={tmp_path / 'killed'}"]
    proc = subprocess.Popen([sys.executable, "-m", "scaleshift.cli", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(log.read_text().splitlines())
    if done >= 4:
        pytest.skip("the run finished before the kill landed")
    resumed = subprocess.run([sys.executable, "-m", "scaleshift.cli", "train", *args, "--resume"],
                             capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # the uninterrupted run in a fresh process too: the same thread set-up as the killed one
    straight_args = [*TINY, "epochs=4", "sched_on_updates=true", f"out_dir={tmp_path / 'straight'}"]
    straight_run = subprocess.run([sys.executable, "-m", "scaleshift.cli", "train", *straight_args],
                                  capture_output=True, text=True, cwd=ROOT)
    assert straight_run.returncode == 0, straight_run.stderr[-2000:]
    killed, straight = ([json.loads(row) for row in (tmp_path / name / "log.jsonl").read_text()
                         .splitlines()] for name in ("killed", "straight"))
    assert [row["epoch"] for row in killed] == [1, 2, 3, 4]
    for a, b in zip(killed, straight, strict=True):
        assert (a["lr"], a["train_loss"], a["val_top1"]) == (b["lr"], b["train_loss"], b["val_top1"])

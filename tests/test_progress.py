"""Progress and logs (issue 15, item 3): bars in a terminal and none in pipes (checked under a
pseudo-terminal), logger=tensorboard beside log.jsonl (resume appends), report curves (PNG)."""
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scaleshift.cli import main
from scaleshift.config import load_recipe
from scaleshift.errors import Interrupted, ScaleshiftError

TINY = ["model_kwargs={img_size: 32, patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
        "dataset=digits", "train_split=train800", "val_split=val200", "test_split=test",
        "input_size=32", "batch_size=50", "lr=3e-3", "log_every=1"]
BAR = re.compile(r"\|[█▏▎▍▌▋▊▉ ]*\| *\d+/\d+ \[")       # tqdm's "| 2/3 [00:01<..."
CLI = [sys.executable, "-m", "scaleshift.cli"]


def in_terminal(args: list[str]) -> tuple[int, str]:
    """Run `args` with stdout and stderr on a pseudo-terminal (120 columns); its exit code and
    everything it wrote. TQDM_MININTERVAL=0 (tqdm's own switch) redraws the bar after every
    step: a tiny run finishes its 3 steps inside tqdm's default 0.1 s and would otherwise
    never draw the loss it sets."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                            env={**os.environ, "TQDM_MININTERVAL": "0"})
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:             # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=300), b"".join(chunks).decode("utf-8", "replace")


def in_pipes(args: list[str]) -> tuple[int, str]:
    proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def train_args(out: Path, *extra: str) -> list[str]:
    return [*CLI, "train", *TINY, "epochs=1", "max_steps_per_epoch=3", f"out_dir={out}", *extra]


@pytest.mark.slow
def test_training_and_eval_show_bars_in_a_terminal_and_plain_lines_in_pipes(tmp_path):
    code, shown = in_terminal(train_args(tmp_path / "tty"))
    assert code == 0, shown
    for desc in ("epoch 1/1", "val", "test"):
        assert re.search(rf"{re.escape(desc)}: +\d+%" + BAR.pattern, shown), (desc, shown)
    assert "loss=" in shown and re.search(r"\d+/3 \[.*(it/s|s/it)", shown), shown
    assert not re.search(r"step \d+/3 loss", shown), "the bar replaces the step lines"
    assert "epoch 1/1 train_loss" in shown                    # the epoch summary stays

    code, piped = in_pipes(train_args(tmp_path / "pipe"))
    assert code == 0, piped
    assert not BAR.search(piped) and "it/s" not in piped
    assert [int(n) for n in re.findall(r"epoch 1/1 step (\d)/3 loss", piped)] == [1, 2, 3]
    assert "epoch 1/1 train_loss" in piped

    code, shown = in_terminal([*CLI, "eval", str(tmp_path / "tty")])
    assert code == 0, shown
    assert re.search(r"evaluate: +\d+%" + BAR.pattern, shown), shown
    assert json.loads(shown.strip().splitlines()[-1])["count"] == 597


def test_rank_other_than_zero_and_tqdm_disable_draw_no_bar(monkeypatch):
    from scaleshift.progress import progress
    monkeypatch.setattr(sys, "stderr", type("Terminal", (), {"isatty": lambda self: True,
                                                             "write": lambda self, s: None,
                                                             "flush": lambda self: None})())

    def shown() -> bool:
        with progress(range(3), "x") as bar:
            return not bar.disable
    assert shown()
    monkeypatch.setenv("RANK", "1")                  # torchrun: rank 0 alone draws
    assert not shown()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not shown()


@pytest.mark.slow
def test_datasets_check_shows_a_bar_while_decoding(tmp_path):
    root = tmp_path / "folder"
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(5):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / split / label / f"{i}.png")
    args = [*CLI, "datasets", "check", "image_folder", "--root", str(root)]
    code, shown = in_terminal(args)
    assert code == 0, shown
    assert re.search(r"checking train: +\d+%" + BAR.pattern, shown), shown
    assert re.search(r"checking test: +\d+%" + BAR.pattern, shown), shown
    code, piped = in_pipes(args)
    assert code == 0 and not BAR.search(piped) and "OK" in piped


def test_a_bad_logger_is_refused_before_any_work(tmp_path):
    with pytest.raises(ScaleshiftError, match=r"logger must be one of \['none', 'tensorboard'\], got 'wandb'"):
        load_recipe(None, [*TINY, f"out_dir={tmp_path / 'r'}", "logger=wandb"])
    assert main(["train", *TINY, f"out_dir={tmp_path / 'r'}", "logger=wandb"]) == 2
    assert not (tmp_path / "r").exists()


def test_a_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    from scaleshift.engine import train
    with pytest.raises(ScaleshiftError, match=r"logger=tensorboard needs the optional package "
                       r"tensorboard(.|\n)*pip install 'scaleshift\[logs\]'"):
        train(load_recipe(None, [*TINY, f"out_dir={tmp_path / 'r'}", "logger=tensorboard"]))
    assert not (tmp_path / "r").exists()


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_scalars_match_the_log_and_a_resume_appends(tmp_path, monkeypatch):
    """Epoch 1 runs, epoch 2 dies after two steps (what it logged is flushed when the writer
    closes), --resume finishes: the first event file is kept, the second holds the rest, and
    read back together every scalar equals log.jsonl with every step once."""
    import scaleshift.engine as engine
    out = tmp_path / "run"
    args = [*TINY, "epochs=2", "max_steps_per_epoch=3", f"out_dir={out}", "logger=tensorboard"]
    real, calls = engine.forward_backward, []

    def dies_in_epoch_two(*a):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(engine, "forward_backward", dies_in_epoch_two)
    with pytest.raises(Interrupted):   # Ctrl-C: the engine names the checkpoint
        engine.train(load_recipe(None, args))
    first = sorted((out / "tensorboard").iterdir())
    assert len(first) == 1
    before = first[0].read_bytes()
    assert [s for s, _ in scalars(out / "tensorboard")["train/step_loss"]] == [1, 2, 3, 4, 5]

    monkeypatch.setattr(engine, "forward_backward", real)
    engine.train(load_recipe(None, args), resume=True)
    files = sorted((out / "tensorboard").iterdir())
    assert len(files) == 2 and files[0].read_bytes() == before       # appended, not clobbered
    read = scalars(out / "tensorboard")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [s for s, _ in read["train/step_loss"]] == [1, 2, 3, 4, 5, 6]   # step 4, 5 once
    for key, tag in (("train_loss", "train/loss"), ("lr", "lr"), ("val_top1", "val/top1"),
                     ("test_top1", "test/top1"), ("test_loss", "test/loss")):
        assert read[tag] == [(3 * row["epoch"], pytest.approx(row[key], rel=1e-6)) for row in log], tag


@pytest.mark.slow
def test_report_draws_training_curves(tmp_path):
    for name, method in (("ssf", "ssf"), ("linear", "linear")):
        assert main(["train", *TINY, "epochs=2", "max_steps_per_epoch=2", f"method={method}",
                     f"out_dir={tmp_path / name}"]) == 0
    runs = [str(tmp_path / "ssf"), str(tmp_path / "linear")]
    assert main(["report", *runs, "--out", str(tmp_path / "rep")]) == 0
    png = (tmp_path / "rep" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    from scaleshift.report import curves_figure, load_logs
    fig = curves_figure(load_logs(runs))
    loss_ax, top1_ax = fig.axes
    assert len(fig.axes) == 2
    assert len(loss_ax.lines) == 2 and len(top1_ax.lines) == 4       # val and test per run
    assert list(loss_ax.lines[0].get_ydata()) == \
        [json.loads(line)["train_loss"] for line in (tmp_path / "ssf" / "log.jsonl").read_text().splitlines()]
    with pytest.raises(ScaleshiftError, match="no log.jsonl"):
        load_logs([tmp_path / "rep"])


@pytest.mark.slow
def test_tensorboard_gets_the_runs_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    out = tmp_path / "run"
    assert main(["train", *TINY, "epochs=1", "max_steps_per_epoch=2", "lr=0.002",
                 f"out_dir={out}", "logger=tensorboard"]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    session = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert session.hparams["lr"].number_value == 0.002
    assert session.hparams["method"].string_value == "ssf"
    assert session.hparams["dataset"].string_value == "digits"
    assert json.loads(session.hparams["model_kwargs"].string_value)["depth"] >= 1
    assert session.hparams["trainable_params"].number_value == \
        json.loads((out / "results.json").read_text())["trainable_params"]
    assert {m.name.tag for m in experiment.metric_infos} == {"val/top1", "test/top1", "train/loss"}

"""Runs you can trust: what is reported is what is saved, what is validated is what runs, and no
user file is ever lost (issue 13)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import scaleshift
from scaleshift import engine
from scaleshift.cli import main
from scaleshift.config import load_recipe
from scaleshift.errors import ScaleshiftError
from scaleshift.io import atomic_dir, atomic_path, file_sha256, save_safetensors
from scaleshift.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model_kwargs={img_size: 32, patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
        "dataset=digits", "train_split=train800", "val_split=val200", "test_split=test",
        "input_size=32", "batch_size=50", "lr=3e-2", "max_steps_per_epoch=4", "log_every=100"]


def train(out, *extra):
    assert main(["train", *TINY, f"out_dir={out}", *extra]) == 0
    return json.loads((Path(out) / "results.json").read_text())


def eval_top1(run, *extra):
    from scaleshift.runs import evaluate_run
    return evaluate_run(run, **dict(extra))["top1"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "clean"
    results = train(out, "epochs=4", "ema_decay=0.5")
    return out, results


# ----------------------------------------------------------------------------- reported == saved
@pytest.mark.slow
def test_eval_reproduces_the_reported_number_and_every_named_one(clean_run):
    out, results = clean_run
    assert results["reported_weights"] == "selected" and results["reported"]["weights"] == "adapter"
    assert eval_top1(out) == results["reported"]["top1"]
    assert eval_top1(out, ("merged", True)) == results["reported"]["top1"]
    for name in ("final", "best"):
        assert eval_top1(out, ("weights", name)) == results[name]["top1"], name
    assert set(results["weights"]) == {"reported", "final", "selected", "best", "final_without_ema"}
    with pytest.raises(ScaleshiftError, match="no weights named 'nosuch'"):
        load_run(out, weights="nosuch")


@pytest.mark.slow
def test_merge_and_export_of_a_run_predict_as_its_reported_weights(clean_run, tmp_path):
    out, _ = clean_run
    _, unmerged = load_run(out)
    assert main(["merge", str(out), "--out", str(tmp_path / "m.safetensors")]) == 0
    plain = scaleshift.models.plain_model(scaleshift.models.identity_of(unmerged)).eval()
    plain.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain(x).argmax(1), unmerged.eval()(x).argmax(1))
        torch.testing.assert_close(plain(x), unmerged(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_the_official_protocol_saves_the_best_test_epoch(tmp_path):
    results = train(tmp_path / "official", "epochs=3", "val_split=null", "protocol=official")
    assert results["reported_weights"] == "best"
    assert eval_top1(tmp_path / "official") == results["best"]["top1"]


@pytest.mark.slow
def test_clean_protocol_runs_both_stages_in_one_command(tmp_path):
    results = train(tmp_path / "two", "epochs=3", "retrain_split=train800val200")
    select, retrain = results["stages"]["select"], results["stages"]["retrain"]
    assert select["train_split"] == "train800" and retrain["train_split"] == "train800val200"
    assert retrain["epochs"] == select["selected"]["epoch"] == results["reported"]["epoch"]
    first = json.loads((tmp_path / "two" / "select" / "results.json").read_text())
    assert "top1" not in first["final"], "stage 1 must not look at the test split"
    log = [json.loads(line) for line in (tmp_path / "two" / "retrain" / "log.jsonl").read_text().splitlines()]
    assert [("test_top1" in row) for row in log] == [False] * (len(log) - 1) + [True]   # tested once
    assert eval_top1(tmp_path / "two") == results["reported"]["top1"]
    # a finished run resumed: the same config keeps its record byte for byte, another is refused
    record = (tmp_path / "two" / "results.json").read_bytes()
    assert main(["train", *TINY, f"out_dir={tmp_path / 'two'}", "epochs=3",
                 "retrain_split=train800val200", "--resume"]) == 0
    assert (tmp_path / "two" / "results.json").read_bytes() == record
    assert main(["train", *TINY, f"out_dir={tmp_path / 'two'}", "epochs=4", "lr=0.3",
                 "retrain_split=train800val200", "--resume"]) == 2
    assert (tmp_path / "two" / "results.json").read_bytes() == record


# ----------------------------------------------------------------------------- validation
HOSTILE = ["method=nosuch", "model=nosuch", "dataset=nosuch", "train_split=nosuch",
           "method_options.foo=1", "method_options.layers=abc", "cache_features=true",
           "lr=nan", "lr=inf", "input_size=-1", "ema_decay=5", "epochs=0", "drop_path=1.5",
           "label_smoothing=-0.1", "grad_clip=0", "protocol=clean val_split=null",
           "retrain_split=nosuch", "device=cuda precision=fp16 device=cpu"]


@pytest.mark.parametrize("bad", HOSTILE)
@pytest.mark.parametrize("validate_only", [True, False])
def test_hostile_train_input_exits_2_before_any_file(bad, validate_only, tmp_path, capsys):
    out = tmp_path / "never"
    argv = ["train", "builtin/digits_ssf", *bad.split(), f"out_dir={out}"]
    assert main(argv + (["--validate-only"] if validate_only else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaleshift: error:") and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["params", "--model", "vit_tiny_patch16_224", "--method", "lora", "dropout=2"], "<= 1.0"),
    (["merge-check", "--model", "vit_tiny_patch16_224", "--method", "vpt_deep", "dropout=1.5"], "<= 1.0"),
    (["params", "--model", "vit_tiny_patch16_224", "--method", "ssf", "init_std=nan"], "finite"),
    (["merge-check", "--model", "vit_tiny_patch16_224", "--method", "lora", "alpha=nan"], "finite"),
])
def test_method_options_out_of_range_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_an_adapter_config_without_num_classes_is_named(tmp_path):
    model = scaleshift.create_model("vit_tiny_patch16_224", 3, img_size=32, patch_size=16, depth=1)
    scaleshift.apply(model, "linear")
    scaleshift.save_adapter(model, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    del meta["scaleshift"]["num_classes"]
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(ScaleshiftError, match="lacks \\['num_classes'\\]"):
        scaleshift.load_adapter(model, tmp_path / "a")


@pytest.mark.slow
def test_divergence_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    original = torch.nn.CrossEntropyLoss.forward
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward",
                        lambda self, logits, target: original(self, logits, target) * float("nan"))
    with pytest.raises(engine.TrainingDiverged, match="no epoch finished"):
        engine.train(load_recipe(None, [*TINY, "epochs=2", f"out_dir={tmp_path / 'nan'}"]))
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------- user files
def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mode)
            for p in sorted(folder.rglob("*"))}


def test_an_existing_user_folder_is_refused_and_left_byte_identical(tmp_path, capsys):
    user = tmp_path / "mine"
    (user / "adapter").mkdir(parents=True)
    (user / "config.yaml").write_text("my own notes\n")
    (user / "results.json").write_text("{}\n")
    (user / "adapter" / "weights.bin").write_bytes(b"precious")
    before = snapshot(user)
    assert main(["train", "builtin/digits_ssf", f"out_dir={user}"]) == 2
    assert "not a scaleshift run" in capsys.readouterr().err
    assert snapshot(user) == before


@pytest.mark.slow
def test_a_second_training_into_one_out_dir_is_refused_at_once_and_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "shared"
    args = ["train", *TINY, "epochs=200", "max_steps_per_epoch=1", f"out_dir={out}"]
    first = subprocess.Popen([sys.executable, "-m", "scaleshift.cli", *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (out / "checkpoint.pt").exists(), "the first training never started"
        started = time.time()
        second = subprocess.run([sys.executable, "-m", "scaleshift.cli", *args, "--resume"], cwd=ROOT,
                                capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        assert f"locked by PID {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert time.time() - started < 60        # refused before building anything
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / ".lock").read_text().strip() == str(first.pid)   # stale: its holder is dead
    done = subprocess.run([sys.executable, "-m", "scaleshift.cli", "train", *TINY, "epochs=200",
                           "max_steps_per_epoch=1", "stop_epoch=2", f"out_dir={tmp_path / 'other'}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    engine.claim_out_dir(out, rank=0).close()    # the dead process's lock is free


def test_files_follow_the_umask_and_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "g.txt").write_text("y")
    finally:
        os.umask(old)
    assert events[:2] == ["fsync", "replace"] and events[2:4] == ["fsync", "replace"]
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d" / "g.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750


def test_equal_weights_and_metadata_give_byte_identical_safetensors_files(tmp_path):
    """safetensors orders the metadata differently from one call to the next; the sha256 a
    backbone or merged model records must not depend on that."""
    from safetensors import safe_open
    tensors = {"b.weight": torch.randn(3, 5), "a.bias": torch.arange(7, dtype=torch.int64),
               "c": torch.ones(2, dtype=torch.bfloat16)}
    metadata = {k: f"value {k} é" for k in "qwertyuiopasdfgh"}
    for i in range(8):
        save_safetensors(tensors, tmp_path / f"{i}.safetensors", metadata)
    assert len({file_sha256(tmp_path / f"{i}.safetensors") for i in range(8)}) == 1
    loaded = load_file(str(tmp_path / "0.safetensors"))
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], v) for k, v in tensors.items())
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == metadata
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------------------- what runs
def test_a_recipe_drop_path_of_zero_reaches_the_model(monkeypatch):
    seen = {}
    real = engine.create_model
    monkeypatch.setattr(engine, "create_model", lambda *a, **kw: (seen.update(kw), real(*a, **kw))[1])
    cfg = load_recipe(None, [*TINY, "drop_path=0.0"])
    trainer = engine.Trainer(cfg, 0, 1, torch.device("cpu"), None, Path("unused"))
    engine.build_model(trainer)
    assert seen["drop_path_rate"] == 0.0
    seen.clear()
    engine.build_model(engine.Trainer(load_recipe(None, TINY), 0, 1, torch.device("cpu"), None, Path("x")))
    assert "drop_path_rate" not in seen            # unset: the architecture's own default


@pytest.mark.slow
def test_random_erasing_acts_on_the_batch_after_mixup(tmp_path, monkeypatch):
    calls = []

    class MarkingMixup:
        def __init__(self, **kwargs):
            self.num_classes = kwargs["num_classes"]

        def __call__(self, images, targets):
            soft = torch.nn.functional.one_hot(targets, self.num_classes).float()
            return torch.full_like(images, 7.0), soft

    class Recorder:
        def __init__(self, probability, **kwargs):
            self.probability = probability

        def __call__(self, images):
            calls.append((images.ndim, bool((images == 7.0).all())))
            return images

    monkeypatch.setattr(engine, "Mixup", MarkingMixup)
    monkeypatch.setattr(engine, "RandomErasing", Recorder)
    engine.train(load_recipe(None, [*TINY, "epochs=1", "max_steps_per_epoch=2", "mixup=0.8",
                                    "random_erasing=0.25", f"out_dir={tmp_path / 're'}"]))
    assert calls == [(4, True), (4, True)]


def test_gradient_accumulation_under_ddp_syncs_only_the_last_micro_step():
    entered = []

    class FakeDDP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.inner(x)

        def no_sync(self):
            import contextlib
            entered.append(1)
            return contextlib.nullcontext()

    cfg = load_recipe(None, [*TINY, "accum_steps=4", "batch_size=8"])
    model = FakeDDP()
    t = engine.Trainer(cfg, 0, 1, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False), Path("x"))
    t.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    t.criterion = torch.nn.CrossEntropyLoss()
    engine.forward_backward(t, model, torch.randn(8, 4), torch.randint(0, 3, (8,)))
    assert len(entered) == 3


def test_the_checkpoint_keeps_the_cuda_rng_state_when_cuda_is_used(monkeypatch):
    state = torch.ByteTensor([1, 2, 3])
    restored = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [state])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(states))
    saved = engine.rng_state()
    assert saved["cuda"] == [state]
    engine.set_rng_state(saved)
    assert restored == [[state]]


def test_predict_refuses_a_bad_top_k_and_a_decompression_bomb_before_any_model(tmp_path, capsys, monkeypatch):
    from PIL import Image
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    assert main(["predict", "--adapters", str(tmp_path / "none"), "--top-k", "-1", str(tmp_path / "big.png")]) == 2
    assert "--top-k must be" in capsys.readouterr().err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert main(["predict", "--adapters", str(tmp_path / "none"), str(tmp_path / "big.png")]) == 2
    err = capsys.readouterr().err
    assert "big.png" in err and "decompression bomb" in err.lower() and "Traceback" not in err


def test_predict_names_a_pipe_and_a_dangling_or_looping_link(tmp_path, capsys):
    import os
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    for name, words in (("pipe.png", "neither an image file nor a folder"),
                        ("loop.png", "symbolic link to nothing"), ("dangling.png", "symbolic link to nothing"),
                        ("absent.png", "not found")):
        assert main(["predict", "--adapters", str(tmp_path / "none"), str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert name in err and words in err and "Traceback" not in err


@pytest.mark.slow
def test_eval_of_a_run_on_a_built_in_task_whose_classes_have_no_names(tmp_path, capsys):
    # struct_* tasks name no classes: eval used to fail on len(None), the default demo's task too
    out = tmp_path / "count"
    cfg = [*TINY, "dataset=struct_count", "test_limit=30", "epochs=1", "max_steps_per_epoch=1", f"out_dir={out}"]
    assert main(["train", *cfg]) == 0
    reported = json.loads((out / "results.json").read_text())["reported"]["top1"]
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == reported
    assert main(["merge", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out / "merged"), "--dataset", "struct_count"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] > 30    # not the run's data: all of the split


@pytest.mark.slow
def test_an_edited_run_config_is_named_in_the_error(clean_run, tmp_path, capsys):
    import shutil
    out, _ = clean_run
    copy = tmp_path / "edited"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".lock"))
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("\nepochs: 4\n", "\nepochs: abc\n"))
    assert "epochs: abc" in config.read_text()
    for argv in (["eval", str(copy)], ["merge", str(copy)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{config} does not hold a valid run config" in err and "epochs must be int" in err
        assert "Traceback" not in err

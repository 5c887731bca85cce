"""Hostile input at the command line (files scaleshift reads, keys, checkpoints, the file
system): each case is one row of CASES. A row gives a setup (it
builds the hostile files under tmp), the argv and the fragment the one error line must hold.
Every case must end within 30 s with its exit code (2 by default), print no traceback, and
leave every file and folder under tmp as it was: nothing of the user's touched, nothing
half-written, no trace of a refused command.

Rows run `cli.main` in this process (an exception other than the CLI's own would fail the row as a
traceback would); a row that could block (a read from a FIFO) runs in a fresh process with a wall
clock limit, WALL_LIMIT. "Within 30 s" is measured as CPU time, so that a machine loaded by other
jobs (where importing torch alone can take 30 s of wall time) does not fail a case."""
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CPU_LIMIT, WALL_LIMIT = 30, 180   # seconds
TINY = ["model_kwargs={img_size: 32, patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
        "dataset=digits", "train_split=train800", "val_split=val200", "test_split=test",
        "input_size=32", "batch_size=50", "epochs=1", "max_steps_per_epoch=1"]
TINY_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)


class Case(NamedTuple):
    id: str
    setup: Callable[[Path], None]      # builds the hostile files under tmp
    argv: list[str]                    # {tmp}: the test's folder, {run}: a finished tiny run
    message: str                       # a fragment of the one line on stderr (or stdout)
    code: int = 2
    env: dict | None = None            # extra environment variables ({tmp} expanded)
    needs_run: bool = False
    fresh: bool = False                # in a fresh process (a row that could block or kill pytest)


def nothing(tmp: Path) -> None:
    pass


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)


def image(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(path)


def user_file(name: str) -> Callable[[Path], None]:
    return lambda tmp: write(tmp / name, b"the user's own bytes\n")


def user_report_folder(tmp: Path) -> None:
    write(tmp / "rep" / "report.md", "my notes\n")


def a_file(tmp: Path) -> None:
    write(tmp / "afile", "not a folder\n")


def empty_folder(tmp: Path) -> None:
    (tmp / "empty").mkdir()


def vtab_list(line: str) -> Callable[[Path], None]:
    """A VTAB task folder whose train800.txt has one good line and `line`; a secret image
    beside the dataset folder for `../` to reach."""
    def setup(tmp: Path) -> None:
        image(tmp / "dtd" / "images" / "a.png")
        image(tmp / "secret.png", 200)
        write(tmp / "dtd" / "train800.txt", f"images/a.png 0\n{line}\n")
    return setup


def vtab_link_out(tmp: Path) -> None:
    image(tmp / "secret.png", 200)
    (tmp / "dtd" / "images").mkdir(parents=True)
    os.symlink(tmp / "secret.png", tmp / "dtd" / "images" / "b.png")
    write(tmp / "dtd" / "train800.txt", "images/b.png 0\n")


def fgvc_json(key: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        image(tmp / "cub" / "images" / "a.png")
        image(tmp / "secret.png", 200)
        write(tmp / "cub" / "train.json", json.dumps({"a.png": 1, key: 2}))
    return setup


def cub_official(images_line: str, label: int) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        image(tmp / "cub" / "images" / "a.png")
        image(tmp / "secret.png", 200)
        write(tmp / "cub" / "images.txt", f"1 a.png\n2 {images_line}\n")
        write(tmp / "cub" / "image_class_labels.txt", f"1 1\n2 {label}\n")
        write(tmp / "cub" / "train_test_split.txt", "1 1\n2 1\n")
    return setup


def folder_with_unreadable_class(tmp: Path) -> None:
    for split in ("train", "test"):
        image(tmp / "ds" / split / "a" / "0.png")
        write(tmp / "ds" / split / "b" / "0.png", b"not a png")


def folder_with_fifo(tmp: Path) -> None:
    for split in ("train", "test"):
        for label in ("a", "b"):
            image(tmp / "ds" / split / label / "0.png")
    os.mkfifo(tmp / "ds" / "train" / "a" / "pipe.png")


def unfinished_run(tmp: Path) -> None:
    """A run folder as a training leaves it before its first epoch ends."""
    import yaml
    from scaleshift.config import load_recipe
    cfg = load_recipe(None, [*TINY, f"out_dir={tmp / 'unfinished'}"])
    write(tmp / "unfinished" / "config.yaml", yaml.safe_dump(cfg.to_dict()))
    write(tmp / "unfinished" / ".scaleshift-run", "")


def untested_run(tmp: Path) -> None:
    """A finished run trained without a val or a test split (the engine's own timing runs)."""
    from scaleshift.cli import main
    assert main(["train", *TINY, "val_split=null", "test_split=null", "protocol=official",
                 f"out_dir={tmp / 'untested'}"]) == 0


def photo(tmp_path):
    image(tmp_path / "x.png", 120)


def adapter(tmp_path, edit=None, name="a"):
    """A tiny SSF adapter at tmp_path/name (and an image), its record edited by `edit`."""
    import scaleshift
    photo(tmp_path)
    model = scaleshift.create_model("vit_tiny_patch16_224", num_classes=3, seed=0, **TINY_VIT)
    scaleshift.apply(model, "ssf", layers=1)
    directory = scaleshift.save_adapter(model, tmp_path / name, class_names=["a", "b", "c"])
    if edit is not None:
        path = directory / "adapter_config.json"
        raw = json.loads(path.read_text())
        text = edit(raw["scaleshift"])
        path.write_text(text if isinstance(text, str) else json.dumps(raw))


def backbone_file(name="bb.safetensors", extra=False, **kwargs):
    """A tiny ViT's weights saved to tmp/name, built with TINY_VIT changed by `kwargs` (and a
    tensor no ViT has, with extra=True)."""
    def make(tmp_path):
        import scaleshift
        from safetensors.torch import save_file
        model = scaleshift.create_model("vit_tiny_patch16_224", 0, seed=0, **dict(TINY_VIT, **kwargs))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if extra:
            state["adapter.down.weight"] = torch.zeros(4, 4)
        save_file(state, str(tmp_path / name))
    return make


def edited(**changes):
    """An adapter whose record gets `changes` (dotted keys reach into sub-records)."""
    def edit(record):
        for dotted, value in changes.items():
            *parents, key = dotted.split(".")
            node = record
            for parent in parents:
                node = node[parent]
            node[key] = value
    return lambda tmp_path: adapter(tmp_path, edit)


def nested_class_names(tmp_path):
    def edit(record):
        record["class_names"] = None
        return json.dumps({"scaleshift": record}).replace(
            '"class_names": null', '"class_names": ' + "[" * 100_000 + "]" * 100_000)
    adapter(tmp_path, edit)


def nan_mean(tmp_path):
    def edit(record):
        record["eval_transform"]["mean"] = [float("nan")] * 3
        return json.dumps({"scaleshift": record})     # Python writes NaN, as a hand edit could
    adapter(tmp_path, edit)


class Payload:
    """Unpickling this creates the marker file: the payload of a hostile checkpoint."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_file(name):
    def setup(tmp_path):
        photo(tmp_path)
        torch.save({"state": Payload(tmp_path / "PAYLOAD_RAN")}, tmp_path / name)
    return setup


def truncated_file(name):
    def setup(tmp_path):
        photo(tmp_path)
        torch.save({"w": torch.zeros(1000)}, tmp_path / name)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    return setup


def resume_run(checkpoint_setup):
    """A run folder scaleshift made, whose checkpoint.pt is hostile."""
    def setup(tmp_path):
        run = tmp_path / "run"
        run.mkdir()
        (run / ".scaleshift-run").touch()
        checkpoint_setup(run)
        (run / "x.png").unlink()       # made by the checkpoint's setup; not part of a run
    return setup


def merged_file(header_changes):
    """A merged .safetensors file whose header metadata is edited."""
    def setup(tmp_path):
        from safetensors.torch import save_file
        photo(tmp_path)
        header = dict(timm_model="vit_tiny_patch16_224", num_classes="3",
                      timm_kwargs=json.dumps(TINY_VIT), class_names=json.dumps(["a", "b", "c"]))
        header.update(header_changes)
        save_file({"x": torch.zeros(1)}, str(tmp_path / "merged.safetensors"), metadata=header)
    return setup


def recipe(text):
    def setup(tmp_path):
        (tmp_path / "recipe.yaml").write_text(text)
    return setup


ALIAS_BOMB = "\n".join(
    ["model: vit_tiny_patch16_224", "model_kwargs:", '  a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    + [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]) + "\n"
GOOD_RESULTS = dict(model="vit_tiny_patch16_224", method="ssf", dataset="digits", protocol="clean",
                    reported=dict(top1=50.0), trainable_params=10)


def run_files(results, log: str | None = None) -> Callable[[Path], None]:
    """A run folder holding only results.json (a dict, or raw text) and log.jsonl."""
    def setup(tmp: Path) -> None:
        write(tmp / "r" / "results.json", results if isinstance(results, str) else json.dumps(results))
        if log is not None:
            write(tmp / "r" / "log.jsonl", log)
    return setup


def dangling_link(tmp: Path) -> None:
    os.symlink(tmp / "missing.safetensors", tmp / "d.safetensors")


PRETRAIN_CONFIG = dict(arch="vit", data="fractal", objective="simclr_rot", steps=1, batch_size=2,
                       lr=0.001, weight_decay=0.05, warmup=0.05, temperature=0.2, rot_weight=0.5, seed=0)
PRETRAIN = ["pretrain", "--data", "fractal", "--steps", "1", "--batch-size", "2", "--out", "{tmp}/pt"]


def pretrain_checkpoint(tmp: Path) -> None:
    """pretrain's folder whose checkpoint has its settings but a step and history of the wrong kind."""
    (tmp / "pt").mkdir()
    (tmp / "pt" / ".scaleshift-pretrain").touch()
    torch.save(dict(config=PRETRAIN_CONFIG, step="x", history=5, model={}, heads={}, opt={}),
               tmp / "pt" / "checkpoint.pt")


TRAIN_VIT = ["train", "builtin/digits_ssf", "model=vit_tiny_patch16_224", "pretrained=false",
             "out_dir={tmp}/out"]
PREDICT_A = ["predict", "--model", "{tmp}/a", "{tmp}/x.png"]

CHECK_DTD = ["datasets", "check", "vtab_dtd", "--root", "{tmp}/dtd", "--split", "train800"]
CASES = [
    # files and the file system
    Case("export-over-a-user-file", user_file("mine.safetensors"),
         ["export", "{run}", "--out", "{tmp}/mine.safetensors", "--overwrite"],
         "not written by scaleshift", needs_run=True),
    Case("merge-over-a-user-file", user_file("mine.safetensors"),
         ["merge", "{run}", "--out", "{tmp}/mine.safetensors", "--overwrite"],
         "not written by scaleshift", needs_run=True),
    Case("onnx-report-over-a-user-file", user_file("m.json"),
         ["export", "{run}", "--format", "onnx", "--out", "{tmp}/m.onnx", "--overwrite"],
         "not written by scaleshift", needs_run=True),
    Case("report-into-a-user-folder", user_report_folder,
         ["report", "{run}", "--out", "{tmp}/rep", "--overwrite"],
         "non-empty folder scaleshift did not write", needs_run=True),
    Case("report-an-untested-run", untested_run, ["report", "{tmp}/untested", "--out", "{tmp}/rep"],
         "has no test top-1"),
    Case("report-into-a-file", user_file("rep"), ["report", "{run}", "--out", "{tmp}/rep"],
         "is a file", needs_run=True),
    Case("refused-training-new-folder", nothing,
         ["train", *TINY, "batch_size=100000000", "out_dir={tmp}/new/run"], "fewer than batch_size"),
    Case("refused-training-empty-folder", empty_folder,
         ["train", *TINY, "batch_size=100000000", "out_dir={tmp}/empty"], "fewer than batch_size"),
    Case("out-dir-is-a-file", a_file, ["train", *TINY, "out_dir={tmp}/afile"], "is a file"),
    Case("out-dir-under-a-file", a_file, ["train", *TINY, "out_dir={tmp}/afile/run"],
         "cannot create the run folder"),
    Case("cache-under-a-file", a_file,
         ["train", *TINY[1:], "model=tf_efficientnet_lite0", "pretrained=true", "out_dir={tmp}/run"],
         "is a file, not a folder", env={"SCALESHIFT_CACHE": "{tmp}/afile/cache"}),
    Case("vtab-list-dotdot", vtab_list("../secret.png 0"),
         CHECK_DTD,
         "train800.txt:2: '../secret.png' leads outside"),
    Case("vtab-list-etc-passwd", vtab_list("../../../../../../../../etc/passwd 3"),
         CHECK_DTD,
         "leads outside the dataset folder"),
    Case("vtab-list-absolute", vtab_list("/etc/passwd 3"),
         CHECK_DTD,
         "train800.txt:2: '/etc/passwd' leads outside"),
    Case("vtab-list-link-out", vtab_link_out,
         CHECK_DTD,
         "leads outside the dataset folder"),
    Case("vtab-label-out-of-range", vtab_list("images/a.png 99"),
         CHECK_DTD,
         "(line 2: images/a.png): label 99 out of range [0, 47)"),
    Case("fgvc-json-dotdot", fgvc_json("../../secret.png"),
         ["datasets", "check", "cub2011", "--root", "{tmp}/cub", "--split", "train", "num_classes=2"],
         "train.json ['../../secret.png']: '../../secret.png' leads outside"),
    Case("fgvc-json-absolute", fgvc_json("/etc/passwd"),
         ["datasets", "check", "cub2011", "--root", "{tmp}/cub", "--split", "train", "num_classes=2"],
         "leads outside the dataset folder"),
    Case("cub-images-dotdot", cub_official("../../secret.png", 2),
         ["datasets", "check", "cub2011", "--root", "{tmp}/cub", "--split", "train", "num_classes=2"],
         "images.txt:2: '../../secret.png' leads outside"),
    Case("cub-label-out-of-range", cub_official("a.png", 201),
         ["datasets", "check", "cub2011", "--root", "{tmp}/cub", "--split", "train"],
         "image_class_labels.txt:2: image id 2 has label 201, out of range 1..200"),
    Case("check-names-the-missing-class", folder_with_unreadable_class,
         ["datasets", "check", "image_folder", "--root", "{tmp}/ds"],
         "no readable image in class b (unreadable: {tmp}/ds/train/b/0.png"),
    Case("check-skips-a-fifo", folder_with_fifo,
         ["datasets", "check", "image_folder", "--root", "{tmp}/ds"],
         "1 unreadable file (1 not a regular file)", code=0, fresh=True),
    Case("eval-an-unfinished-run", unfinished_run, ["eval", "{tmp}/unfinished"],
         "is an unfinished run (no results.json, no adapter/): it has no checkpoint yet"),
    # file contents, keys and checkpoints
    Case("adapter-class-names-short", edited(class_names=["a"]), PREDICT_A, "class_names must be 3 strings"),
    Case("adapter-json-nested", nested_class_names, PREDICT_A, "nests deeper than"),
    Case("adapter-num-classes-huge", edited(num_classes=10**30), PREDICT_A, "num_classes must be an integer"),
    Case("adapter-img-size-negative", edited(**{"eval_transform.input_size": [3, -5, -5]}), PREDICT_A,
                 "eval_transform.input_size"),
    Case("adapter-std-zero", edited(**{"eval_transform.std": [0, 0, 0]}), PREDICT_A, "eval_transform.std"),
    Case("adapter-mean-nan", nan_mean, PREDICT_A, "NaN"),
    Case("adapter-depth-huge", edited(**{"base_model.kwargs.depth": 10**6}), PREDICT_A, "depth=1000000 is out of range"),
    Case("adapter-width-huge", edited(**{"base_model.kwargs.embed_dim": 1 << 20}), PREDICT_A, "parameters"),
    Case("adapter-kwarg-unknown", edited(**{"base_model.kwargs.foo": 1}), PREDICT_A, "foo is not an argument"),
    Case("adapter-seed-huge", edited(**{"base_model.seed": 10**23}), PREDICT_A, "base_model.seed"),
    Case("predict-input-size-0", lambda tmp: adapter(tmp), ["predict", "--model", "{tmp}/a", "--input-size", "0", "{tmp}/x.png"],
                 "--input-size must be an integer"),
    Case("predict-input-size-huge", lambda tmp: adapter(tmp), ["predict", "--model", "{tmp}/a", "--input-size", "100000",
                                            "{tmp}/x.png"],
                 "--input-size must be an integer"),
    Case("predict-pretrained-missing", lambda tmp: adapter(tmp), ["predict", "--adapters", "{tmp}/a", "--pretrained",
                                            "{tmp}/nosuch.safetensors", "{tmp}/x.png"],
                 "nosuch.safetensors not found"),
    Case("predict-pretrained-for-a-backbone-without-file", lambda tmp: adapter(tmp), ["predict", "--model", "{tmp}/a", "--pretrained",
                                            "{tmp}/a/adapter_model.safetensors", "{tmp}/x.png"],
                 "drop --pretrained"),
    Case("merged-header-depth-huge", merged_file({"timm_kwargs": json.dumps(dict(TINY_VIT, depth=10**6))}),
                 ["predict", "--model", "{tmp}/merged.safetensors", "{tmp}/x.png"],
                 "depth=1000000 is out of range"),
    Case("merged-header-num-classes", merged_file({"num_classes": "1" * 5000}),
                 ["predict", "--model", "{tmp}/merged.safetensors", "{tmp}/x.png"],
                 "num_classes must be an integer"),
    Case("recipe-alias-bomb", recipe(ALIAS_BOMB), ["train", "{tmp}/recipe.yaml", "--validate-only"],
                 "expands to"),
    Case("bench-into-a-user-folder", lambda tmp: write(tmp / "mine" / "bench.csv", "my csv\n"),
         ["bench", "--model", "scaleshift_vit32", "--batch-size", "2", "--rounds", "1", "--parts", "time",
          "--out", "{tmp}/mine"], "non-empty folder scaleshift did not write"),
    Case("adapter-folder-with-a-foreign-record",
         lambda tmp: (photo(tmp), write(tmp / "u" / "scaleshift_adapter.json", '{"mine": 1}')),
         ["predict", "--model", "{tmp}/u", "{tmp}/x.png"], "is not an artifact scaleshift reads"),
    Case("train-min-lr-above-lr", nothing, TRAIN_VIT + ["min_lr=1", "--validate-only"],
         "min_lr=1 is above lr="),
    Case("train-warmup-lr-above-lr", nothing, TRAIN_VIT + ["warmup_lr=0.5", "--validate-only"],
         "warmup_lr=0.5 is above lr="),
    Case("train-stop-epoch-past-schedule", nothing, TRAIN_VIT + ["stop_epoch=50", "--validate-only"],
         "stop_epoch=50 is past the schedule's last epoch"),
    Case("train-cache-prefix-on-convnext", nothing,
         ["train", "builtin/digits_ssf", "cache_prefix=true", "out_dir={tmp}/out", "--validate-only"],
         "not ConvNeXt; set cache_prefix=false"),
    Case("train-pretrained-lacks-blocks", backbone_file(depth=1),
         ["train", *TINY, "pretrained={tmp}/bb.safetensors", "out_dir={tmp}/out", "--validate-only"],
         "has no values for 12 of the model's tensors (blocks.1."),
    Case("train-pretrained-lacks-blocks-trains-nothing", backbone_file(depth=1),
         ["train", *TINY, "pretrained={tmp}/bb.safetensors", "out_dir={tmp}/out"],
         "has no values for 12 of the model's tensors"),
    Case("train-pretrained-has-more", backbone_file(extra=True),
         ["train", *TINY, "pretrained={tmp}/bb.safetensors", "out_dir={tmp}/out", "--validate-only"],
         "holds 1 tensors the model does not have (adapter.down.weight)"),
    Case("train-pretrained-other-width", backbone_file(embed_dim=64),
         ["train", *TINY, "pretrained={tmp}/bb.safetensors", "out_dir={tmp}/out", "--validate-only"],
         "tensors have other shapes: cls_token is [1, 1, 64] in the file, [1, 1, 32] in the model"),
    Case("train-seed-huge", nothing, TRAIN_VIT + ["seed=100000000000000000000000", "--validate-only"],
                 "seed must be"),
    Case("train-kwargs-depth-negative", nothing, TRAIN_VIT + ["model_kwargs.depth=-1", "--validate-only"],
                 "do not build"),
    Case("train-kwargs-img-size-text", nothing, TRAIN_VIT + ["model_kwargs.img_size=abc", "--validate-only"],
                 "do not build"),
    Case("train-kwargs-unknown", nothing, TRAIN_VIT + ["model_kwargs.foo=1", "--validate-only"],
                 "model_kwargs.foo is not an argument"),
    Case("train-kwargs-width-huge", nothing, TRAIN_VIT + ["model_kwargs.embed_dim=1000000", "model_kwargs.num_heads=1",
                                       "--validate-only"],
                 "parameters"),
    Case("bench-size-the-vit-was-not-built-for", nothing,
         ["bench", "--model", "vit_tiny_patch16_224", "--batch-size", "2", "--size", "16", "--rounds", "1",
          "--parts", "time", TINY[0]],
         "pass model_kwargs.img_size=16"),
    Case("train-pretrained-pickle", pickle_file("evil.pth"), TRAIN_VIT + ["pretrained={tmp}/evil.pth", "epochs=1"],
                 "holds Python objects, not tensors"),
    Case("train-pretrained-truncated", truncated_file("cut.pth"), TRAIN_VIT + ["pretrained={tmp}/cut.pth", "epochs=1"],
                 "truncated"),
    Case("report-results-not-json", run_files("{bad"), ["report", "{tmp}/r"], "is not valid JSON"),
    Case("report-results-wrong-kinds", run_files(dict(GOOD_RESULTS, dataset=5, trainable_params=None)),
         ["report", "{tmp}/r"], "dataset, trainable_params missing or of the wrong kind"),
    Case("report-log-not-rows", run_files(GOOD_RESULTS, '{"foo": 1}\n'),
         ["report", "{tmp}/r", "--out", "{tmp}/rep"], "line 1 is not a training-log row"),
    Case("analyze-into-a-user-folder", lambda tmp: write(tmp / "mine" / "weights.json", "mine\n"),
         ["analyze", "weights", "{run}", "--out", "{tmp}/mine"], "never written into", needs_run=True),
    Case("analyze-one-sample", nothing,
         ["analyze", "similarity", "{run}", "{run}", "--data", "digits", "--samples", "1"],
         "--samples must be an integer in 2..", needs_run=True),
    Case("export-over-a-dangling-link", dangling_link, ["export", "{run}", "--out", "{tmp}/d.safetensors"],
         "symbolic link to a missing file", needs_run=True),
    Case("merge-out-under-a-file", a_file, ["merge", "{run}", "--out", "{tmp}/afile/x"],
         "afile", needs_run=True),
    Case("pretrain-log-every-zero", nothing, PRETRAIN + ["--log-every", "0"], "--log-every must be"),
    Case("pretrain-into-a-user-folder", lambda tmp: write(tmp / "pt" / "summary.json", "mine\n"),
         PRETRAIN, "never written into"),
    Case("pretrain-resume-edited", pretrain_checkpoint, PRETRAIN + ["--resume"],
         "lacks a field or holds one of the wrong kind"),
    Case("recipe-integer-too-long", recipe("seed: " + "1" * 5000 + "\n"),
         ["train", "{tmp}/recipe.yaml", "--validate-only"], "holds a value YAML cannot read"),
    Case("recipe-key-not-a-name", recipe("1: 2\n"), ["train", "{tmp}/recipe.yaml", "--validate-only"],
         "config key 1 is not a name"),
    Case("recipe-python-tag", recipe("model: !!python/object:os.system [ls]\n"),
         ["train", "{tmp}/recipe.yaml", "--validate-only"], "(line 1, column 8)"),
    Case("override-integer-too-long", nothing, TRAIN_VIT + ["seed=" + "1" * 5000, "--validate-only"],
         "the value of seed holds a value YAML cannot read"),
    Case("override-option-key-not-a-name", nothing, TRAIN_VIT + ["dataset_options={1: 2}", "--validate-only"],
         "config key dataset_options.1 is not a name"),
    Case("predict-input-size-the-vit-cannot-take", lambda tmp: adapter(tmp),
         ["predict", "--model", "{tmp}/a", "--input-size", "64", "{tmp}/x.png"],
         "--input-size 64: the model does not take (3, 64, 64) input"),
    Case("predict-adapters-input-size-the-vit-cannot-take", lambda tmp: adapter(tmp),
         ["predict", "--adapters", "{tmp}/a", "--input-size", "64", "{tmp}/x.png"],
         "leave --input-size out to predict at the size the model was trained at"),
    Case("train-input-size-the-vit-cannot-take", nothing, TRAIN_VIT + ["input_size=32", "epochs=1"],
         "input_size=32: the model does not take (3, 32, 32) input (Input height (32) doesn't match "
         "model (224)); a ViT is built for one input size, so pass model_kwargs.img_size=32 as well"),
    Case("train-input-size-too-small-for-the-convnet", nothing,
         ["train", "builtin/digits_ssf", "input_size=4", "epochs=1", "out_dir={tmp}/out"],
         "give a larger input_size, or leave it out for the backbone's own"),
    Case("train-offset-past-the-split", nothing, TRAIN_VIT + ["train_offset=100000", "--validate-only"],
         "train_offset = 100000 exceeds the 800 items of split 'train800'"),
    Case("train-offset-plus-limit-past-the-split", nothing,
         TRAIN_VIT + ["train_offset=100", "train_limit=800", "--validate-only"],
         "train_offset + train_limit = 900 exceeds the 800 items"),
    Case("train-opt-unknown", nothing, TRAIN_VIT + ["opt=bogus", "--validate-only"],
         "opt='bogus' is not one of timm's optimizers"),
    Case("train-opt-needs-cuda-package", nothing, TRAIN_VIT + ["opt=bnbadam", "--validate-only"],
         "needs CUDA and bitsandbytes or APEX"),
    Case("train-opt-second-order", nothing, TRAIN_VIT + ["opt=adahessian", "--validate-only"],
         "needs a second-order backward pass"),
    Case("train-device-cuda-without-one", nothing, TRAIN_VIT + ["device=cuda", "--validate-only"],
         "no CUDA device is available"),
    Case("train-fp16-without-cuda", nothing, TRAIN_VIT + ["precision=fp16", "--validate-only"],
         "precision=fp16 needs CUDA"),
    Case("train-pretrained-a-folder", nothing, TRAIN_VIT + ["pretrained={tmp}", "--validate-only"],
         "is a folder; give the backbone's weights file"),
    Case("train-pretrained-empty", nothing, TRAIN_VIT + ["pretrained=", "--validate-only"],
         "pretrained='': is empty"),
    Case("resume-pickle", resume_run(pickle_file("checkpoint.pt")),
                 ["train", "builtin/digits_ssf", "out_dir={tmp}/run", "epochs=1", "--resume"],
                 "holds Python objects, not tensors"),
    Case("resume-truncated", resume_run(truncated_file("checkpoint.pt")),
                 ["train", "builtin/digits_ssf", "out_dir={tmp}/run", "epochs=1", "--resume"],
                 "truncated or not a PyTorch checkpoint"),
]


def snapshot(folder: Path) -> dict:
    """Every path under `folder` with its bytes (folders and FIFOs by kind), links by target."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                tree[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                tree[rel] = ("dir",)
            elif path.is_file():
                tree[rel] = ("file", path.read_bytes())
            else:
                tree[rel] = ("other",)
    return tree


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from scaleshift.cli import main
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", *TINY, f"out_dir={out}"]) == 0
    return out


def run_in_process(argv: list[str], env: dict, cwd: Path, monkeypatch) -> tuple[int, str, str]:
    """cli.main in this process (no torch import per row): its exit code, stdout and stderr."""
    from scaleshift.cli import main
    monkeypatch.chdir(cwd)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:          # argparse's own refusals
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def run_fresh(argv: list[str], env: dict, cwd: Path) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "scaleshift.cli", *argv], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), **env),
                          cwd=cwd, timeout=WALL_LIMIT)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=pytest.mark.slow) for c in CASES])
def test_hostile_input_is_one_clear_line(case, tmp_path, request, monkeypatch):
    run = request.getfixturevalue("finished_run") if case.needs_run else None
    case.setup(tmp_path)
    before = snapshot(tmp_path)
    def expand(text):
        return text.replace("{tmp}", str(tmp_path)).replace("{run}", str(run))
    argv = [expand(a) for a in case.argv]
    env = {k: expand(v) for k, v in (case.env or {}).items()}
    def cpu_seconds():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime + time.process_time()
    cpu = cpu_seconds()
    code, stdout, stderr = (run_fresh(argv, env, tmp_path) if case.fresh
                            else run_in_process(argv, env, tmp_path, monkeypatch))
    assert cpu_seconds() - cpu < CPU_LIMIT
    assert code == case.code, stderr
    assert "Traceback" not in stderr, stderr
    assert expand(case.message) in stderr + stdout, stderr
    if case.code == 2:
        assert len(stderr.strip().splitlines()) == 1, stderr
    assert snapshot(tmp_path) == before   # nothing touched, nothing half-written, no trace


@pytest.mark.slow
@pytest.mark.parametrize("history", [[], ["x"], [{"epoch": 1}]], ids=["empty", "text", "no-scores"])
def test_resume_refuses_an_edited_history(history, finished_run, tmp_path, capsys):
    # an edited history once reached summarize() as max() of nothing or a KeyError
    import shutil

    from scaleshift.cli import main
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["history"] = history
    torch.save(state, run / "checkpoint.pt")
    before = snapshot(run)
    assert main(["train", *TINY, f"out_dir={run}", "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err and snapshot(run) == before


def _edit_adapter_weights(run: Path, edit) -> None:
    """Rewrite a run's adapter tensors with `edit` and record the new file's sha256, as a
    careful hand-editor would: the checksum no longer catches the change."""
    import hashlib

    from safetensors.torch import load_file, save_file
    weights, config = run / "adapter" / "adapter_model.safetensors", run / "adapter" / "adapter_config.json"
    state = load_file(weights)
    edit(state)
    save_file(state, weights)
    record = json.loads(config.read_text())
    record["scaleshift"]["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    config.write_text(json.dumps(record))


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({k: torch.full_like(v, float("nan")) for k, v in s.items()}), "NaN or infinite"),
    (lambda s: s.update({"head.weight": torch.zeros(3)}), "head.weight"),
    (lambda s: s.update({k: v.to(torch.int64) for k, v in s.items()}), "torch.int64"),
    (lambda s: s.pop(sorted(s)[0]), "missing"),
], ids=["nan", "shape", "int64", "missing"])
@pytest.mark.parametrize("command", ["merge", "eval"])
def test_edited_adapter_tensors_are_refused_by_merge_as_by_eval(edit, message, command, finished_run,
                                                                  tmp_path, capsys):
    # the pure merge (merge, export) once merged what eval refused, or crashed in load_state_dict
    import shutil

    from scaleshift.cli import main
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _edit_adapter_weights(run, edit)
    before = snapshot(run)
    assert main([command, str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert snapshot(run) == before


@pytest.mark.slow
def test_refusals_name_what_is_in_the_way(finished_run, tmp_path, capsys):
    from scaleshift.cli import main
    photo(tmp_path)
    assert main(["merge", str(finished_run), "--out", str(tmp_path / "m")]) == 0
    (tmp_path / "m" / "README.md").write_text("my notes")
    for argv, message in (
            (["merge", str(finished_run), "--out", str(tmp_path / "m"), "--overwrite"],
             "now holds README.md as well, which replacing it would delete"),
            (["merge", str(finished_run), "--out", str(finished_run / "adapter"), "--overwrite"],
             "is an adapter folder, not a merged export"),
            (["merge", str(finished_run), "--out", str(finished_run), "--overwrite"], "is a run folder"),
            (["predict", "--model", str(tmp_path / "m" / "model.safetensors"), str(tmp_path / "x.png")],
             "is the weights file of the timm folder")):
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert (tmp_path / "m" / "README.md").read_text() == "my notes"


def test_class_names_that_are_not_strings_are_named():
    import scaleshift
    from scaleshift.errors import ScaleshiftError
    model = scaleshift.create_model("vit_tiny_patch16_224", num_classes=3, seed=0, **TINY_VIT)
    scaleshift.apply(model, "ssf")
    with pytest.raises(ScaleshiftError, match="got int '1'"):
        scaleshift.save_adapter(model, "unused", class_names=[1, 2, 3])


@pytest.mark.slow
def test_a_users_file_in_the_adapter_folder_is_found_before_training(finished_run, tmp_path, capsys):
    import shutil

    from scaleshift.cli import main
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "results.json").unlink()       # the last epoch trained, its results never written
    (run / "adapter" / "README.md").write_text("model card")
    argv = ["train", *TINY, f"out_dir={run}", "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "adapter holds README.md, which scaleshift did not write" in err and "(with --resume)" in err
    assert (run / "adapter" / "README.md").read_text() == "model card" and not (run / "results.json").exists()
    (run / "adapter" / "README.md").unlink()
    assert main(argv) == 0 and (run / "results.json").is_file()


def test_wrapped_models_and_foreign_records_are_named(tmp_path):
    import scaleshift
    from scaleshift.errors import ScaleshiftError
    model = scaleshift.create_model("vit_tiny_patch16_224", num_classes=3, seed=0, **TINY_VIT)
    wrapped = torch.nn.DataParallel(scaleshift.apply(model, "ssf"))
    for call in (lambda: scaleshift.merge(wrapped), lambda: scaleshift.save_adapter(wrapped, tmp_path / "a")):
        with pytest.raises(ScaleshiftError, match="wrapped in DataParallel.*pass model.module"):
            call()
    scaleshift.save_adapter(wrapped.module, tmp_path / "a")                      # the fix works
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "scaleshift_adapter.json").write_text('{"mine": 1}')      # a name, not a record
    with pytest.raises(ScaleshiftError, match="not an adapter scaleshift wrote"):
        scaleshift.save_adapter(model, tmp_path / "u")
    assert (tmp_path / "u" / "scaleshift_adapter.json").read_text() == '{"mine": 1}'


@pytest.mark.slow
def test_report_names_an_unfinished_run(finished_run, tmp_path, capsys):
    import shutil

    from scaleshift.cli import main
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "results.json").unlink()
    assert main(["report", str(run)]) == 2
    assert "is an unfinished run" in capsys.readouterr().err

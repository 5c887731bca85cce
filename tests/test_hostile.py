"""Files are hostile input: each case builds hostile files in tmp_path, runs the command in a
fresh process and expects exit 2, one `scaleshift: error:` line naming the problem, no
traceback, an answer within 30 s, every file that was there before byte-identical, and no
half-written file left behind.

CASES rows: (setup(tmp_path), argv with {tmp} for tmp_path, a fragment of the message)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SLOW = pytest.mark.slow      # each row starts a fresh Python (about 5-10 s)
TINY_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)


def nothing(tmp_path):
    pass


def image(tmp_path):
    from PIL import Image
    Image.new("RGB", (32, 32), (120, 30, 200)).save(tmp_path / "x.png")


def adapter(tmp_path, edit=None, name="a"):
    """A tiny SSF adapter at tmp_path/name (and an image), its record edited by `edit`."""
    import scaleshift
    image(tmp_path)
    model = scaleshift.create_model("vit_tiny_patch16_224", num_classes=3, seed=0, **TINY_VIT)
    scaleshift.apply(model, "ssf", layers=1)
    directory = scaleshift.save_adapter(model, tmp_path / name, class_names=["a", "b", "c"])
    if edit is not None:
        path = directory / "adapter_config.json"
        raw = json.loads(path.read_text())
        text = edit(raw["scaleshift"])
        path.write_text(text if isinstance(text, str) else json.dumps(raw))


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
        image(tmp_path)
        torch.save({"state": Payload(tmp_path / "PAYLOAD_RAN")}, tmp_path / name)
    return setup


def truncated_file(name):
    def setup(tmp_path):
        image(tmp_path)
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
        image(tmp_path)
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
TRAIN_VIT = ["train", "builtin/digits_ssf", "model=vit_tiny_patch16_224", "pretrained=false",
             "out_dir={tmp}/out"]
PREDICT_A = ["predict", "--model", "{tmp}/a", "{tmp}/x.png"]

CASES = [
    # file contents, keys and checkpoints
    pytest.param(edited(class_names=["a"]), PREDICT_A, "class_names must be 3 strings",
                 id="adapter-class-names-short", marks=SLOW),
    pytest.param(nested_class_names, PREDICT_A, "nests deeper than",
                 id="adapter-json-nested", marks=SLOW),
    pytest.param(edited(num_classes=10**30), PREDICT_A, "num_classes must be an integer",
                 id="adapter-num-classes-huge", marks=SLOW),
    pytest.param(edited(**{"eval_transform.input_size": [3, -5, -5]}), PREDICT_A,
                 "eval_transform.input_size", id="adapter-img-size-negative", marks=SLOW),
    pytest.param(edited(**{"eval_transform.std": [0, 0, 0]}), PREDICT_A, "eval_transform.std",
                 id="adapter-std-zero", marks=SLOW),
    pytest.param(nan_mean, PREDICT_A, "NaN", id="adapter-mean-nan", marks=SLOW),
    pytest.param(edited(**{"base_model.kwargs.depth": 10**6}), PREDICT_A, "depth=1000000 is out of range",
                 id="adapter-depth-huge", marks=SLOW),
    pytest.param(edited(**{"base_model.kwargs.embed_dim": 1 << 20}), PREDICT_A, "parameters",
                 id="adapter-width-huge", marks=SLOW),
    pytest.param(edited(**{"base_model.kwargs.foo": 1}), PREDICT_A, "foo is not an argument",
                 id="adapter-kwarg-unknown", marks=SLOW),
    pytest.param(edited(**{"base_model.seed": 10**23}), PREDICT_A, "base_model.seed",
                 id="adapter-seed-huge", marks=SLOW),
    pytest.param(lambda tmp: adapter(tmp), ["predict", "--model", "{tmp}/a", "--input-size", "0", "{tmp}/x.png"],
                 "--input-size must be an integer", id="predict-input-size-0", marks=SLOW),
    pytest.param(lambda tmp: adapter(tmp), ["predict", "--model", "{tmp}/a", "--input-size", "100000",
                                            "{tmp}/x.png"],
                 "--input-size must be an integer", id="predict-input-size-huge", marks=SLOW),
    pytest.param(lambda tmp: adapter(tmp), ["predict", "--adapters", "{tmp}/a", "--pretrained",
                                            "{tmp}/nosuch.safetensors", "{tmp}/x.png"],
                 "nosuch.safetensors not found", id="predict-pretrained-missing", marks=SLOW),
    pytest.param(lambda tmp: adapter(tmp), ["predict", "--model", "{tmp}/a", "--pretrained",
                                            "{tmp}/a/adapter_model.safetensors", "{tmp}/x.png"],
                 "drop --pretrained", id="predict-pretrained-with-model", marks=SLOW),
    pytest.param(merged_file({"timm_kwargs": json.dumps(dict(TINY_VIT, depth=10**6))}),
                 ["predict", "--model", "{tmp}/merged.safetensors", "{tmp}/x.png"],
                 "depth=1000000 is out of range", id="merged-header-depth-huge", marks=SLOW),
    pytest.param(merged_file({"num_classes": "1" * 5000}),
                 ["predict", "--model", "{tmp}/merged.safetensors", "{tmp}/x.png"],
                 "num_classes must be an integer", id="merged-header-num-classes", marks=SLOW),
    pytest.param(recipe(ALIAS_BOMB), ["train", "{tmp}/recipe.yaml", "--validate-only"],
                 "expands to", id="recipe-alias-bomb", marks=SLOW),
    pytest.param(nothing, TRAIN_VIT + ["seed=100000000000000000000000", "--validate-only"],
                 "seed must be", id="train-seed-huge", marks=SLOW),
    pytest.param(nothing, TRAIN_VIT + ["model_kwargs.depth=-1", "--validate-only"],
                 "do not build", id="train-kwargs-depth-negative", marks=SLOW),
    pytest.param(nothing, TRAIN_VIT + ["model_kwargs.img_size=abc", "--validate-only"],
                 "do not build", id="train-kwargs-img-size-text", marks=SLOW),
    pytest.param(nothing, TRAIN_VIT + ["model_kwargs.foo=1", "--validate-only"],
                 "model_kwargs.foo is not an argument", id="train-kwargs-unknown", marks=SLOW),
    pytest.param(nothing, TRAIN_VIT + ["model_kwargs.embed_dim=1000000", "model_kwargs.num_heads=1",
                                       "--validate-only"],
                 "parameters", id="train-kwargs-width-huge", marks=SLOW),
    pytest.param(pickle_file("evil.pth"), TRAIN_VIT + ["pretrained={tmp}/evil.pth", "epochs=1"],
                 "holds Python objects, not tensors", id="train-pretrained-pickle", marks=SLOW),
    pytest.param(truncated_file("cut.pth"), TRAIN_VIT + ["pretrained={tmp}/cut.pth", "epochs=1"],
                 "truncated", id="train-pretrained-truncated", marks=SLOW),
    pytest.param(resume_run(pickle_file("checkpoint.pt")),
                 ["train", "builtin/digits_ssf", "out_dir={tmp}/run", "epochs=1", "--resume"],
                 "holds Python objects, not tensors", id="resume-pickle", marks=SLOW),
    pytest.param(resume_run(truncated_file("checkpoint.pt")),
                 ["train", "builtin/digits_ssf", "out_dir={tmp}/run", "epochs=1", "--resume"],
                 "truncated or not a PyTorch checkpoint", id="resume-truncated", marks=SLOW),
]


def snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("setup, argv, message", CASES)
def test_hostile_input_exits_2_with_one_line_and_touches_nothing(setup, argv, message, tmp_path):
    setup(tmp_path)
    before = snapshot(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "scaleshift.cli", *[a.format(tmp=tmp_path) for a in argv]],
                          capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("scaleshift: error:") and message in proc.stderr, proc.stderr
    after = snapshot(tmp_path)
    assert {p: after.get(p) for p in before} == before          # every file as it was
    assert not [p for p in after if p.name.endswith(".tmp")]     # nothing half-written
    assert not list(tmp_path.rglob("PAYLOAD_RAN"))               # the pickle's code never ran

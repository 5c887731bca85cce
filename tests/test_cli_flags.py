"""Issue 22, item 6: every config key as `--key value`, `--key=value` or `key=value`; an
unknown key names the closest ones; --validate-only checks data paths, the weights file and the
optional packages the run needs."""
import json
import sys

import pytest

from scaleshift.cli import build_parser, main, parse_command_line
from scaleshift.config import recipe_names

TINY = ["--model-kwargs", "{img_size: 32, patch_size: 8, depth: 1, embed_dim: 16, num_heads: 2}",
        "--dataset=digits", "--train-split", "train800", "--val_split=val200", "--input-size", "32",
        "--batch-size", "50", "--max-steps-per-epoch", "2", "--test-limit", "50"]


def parsed(*argv):
    return parse_command_line(build_parser(), list(argv))


def test_flags_become_assignments_in_any_spelling():
    args = parsed("train", "builtin/digits_ssf", "--epochs", "3", "--lr=1e-3", "--resume",
                  "--method-options.layers", "2", "warmup_epochs=1", "--cache-features",
                  "--validate-only", "--weight_decay", "-1")
    assert args.recipe == "builtin/digits_ssf" and args.resume and args.validate_only
    assert args.overrides == ["epochs=3", "lr=1e-3", "method_options.layers=2", "warmup_epochs=1",
                              "cache_features=true", "weight_decay=-1"]
    assert parsed("train", "--epochs", "2").recipe is None       # a value is never the recipe


@pytest.mark.parametrize("name", [n for n in recipe_names() if n.startswith("builtin/")])
def test_every_builtin_recipe_takes_epochs_as_a_flag(name, capsys):
    assert main(["train", name, "--epochs", "1", "--validate-only"]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.slow
def test_a_one_epoch_run_given_by_flags_trains(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out-dir", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["epochs"] == 1


@pytest.mark.parametrize("argv, message", [
    (["epoch=3"], "unknown config key 'epoch' (did you mean epochs"),
    (["--epoch", "3"], "unknown config key 'epoch' (did you mean epochs"),
    (["--lrr=1e-3"], "did you mean lr"),
    (["--epochs"], "--epochs needs a value"),
    (["data_root=/no/such/folder"], "data_root /no/such/folder is not an existing folder"),
    (["pretrained=/no/such/weights.safetensors"], "no such file"),
    (["dataset=image_folder", "train_split=train", "val_split=val", "test_split=test"],
     "needs data_root=FOLDER"),
])
def test_bad_keys_and_paths_exit_2_with_one_line(argv, message, capsys):
    assert main(["train", "builtin/digits_ssf", *argv, "--validate-only"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, module, extra", [
    (["logger=tensorboard"], "tensorboard", "logs"),
    (["method=lora"], "peft", "lora"),
    (["dataset=patch_textures"], "skimage", "data"),
])
def test_validate_only_names_a_missing_optional_package(argv, module, extra, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)   # an import of it now fails
    assert main(["train", "builtin/digits_ssf", *argv, "--validate-only"]) == 2
    assert f"pip install 'scaleshift[{extra}]'" in capsys.readouterr().err


def test_other_commands_suggest_the_closest_option(capsys):
    assert main(["eval", "somewhere", "splt=test"]) == 2
    assert "did you mean split" in capsys.readouterr().err

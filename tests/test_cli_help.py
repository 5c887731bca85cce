"""A command line that teaches (issue 15, items 4 and 6): `train --help` lists every key from
RunConfig itself with three example commands that are valid; `list models PATTERN` and
`list recipes` print one name per line; recipes are named without a path, a real file wins."""
import dataclasses
import shlex

import pytest
import timm

from scaleshift import config
from scaleshift.cli import build_parser, main, parse_command_line
from scaleshift.config import RANGES, RunConfig, find_recipe, load_recipe, recipe_names
from scaleshift.errors import ScaleshiftError


def train_help(capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def key_lines(text: str) -> dict[str, str]:
    lines = {}
    for line in text.splitlines():
        words = line.split()
        if line.startswith("    ") and words and words[0] in {f.name for f in dataclasses.fields(RunConfig)}:
            lines[words[0]] = line
    return lines


def test_train_help_lists_every_key_with_type_default_and_choices(capsys):
    lines = key_lines(train_help(capsys))
    fields = dataclasses.fields(RunConfig)
    assert set(lines) == {f.name for f in fields}
    for f in fields:
        words = lines[f.name].split()
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert config._type_name(config._HINTS[f.name]) in lines[f.name]
        assert config._yaml_text(default) in words[1:6], (f.name, lines[f.name])
    assert lines["epochs"].split()[1:3] == ["int", "10"] and ">= 1" in lines["epochs"]
    assert lines["grad_clip"].split()[1:5] == ["float", "|", "null", "null"]
    assert "{fp32, bf16, fp16, auto}" in lines["precision"] and "{clean, official}" in lines["protocol"]
    assert "ssf" in lines["method"] and "lora" in lines["method"]   # from the method registry
    for key, (_, _, hint) in RANGES.items():
        assert hint in lines[key]
    for key, allowed in RunConfig.CHOICES.items():
        assert "{" + ", ".join(allowed) + "}" in lines[key]


def test_train_help_is_generated_from_the_dataclass(monkeypatch):
    monkeypatch.setitem(RANGES, "epochs", (1, None, ">= 1, a hint no one copied"))
    assert ">= 1, a hint no one copied" in key_lines(config.describe_keys())["epochs"]


def test_train_help_examples_are_four_valid_commands(capsys, tmp_path):
    text = train_help(capsys)
    examples = [line.strip() for line in text.split("examples:")[1].splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert len(examples) == 4 and "--epochs 20" in examples[1]   # key=value and --key value
    assert examples[2].endswith("--resume") and examples[3].startswith("torchrun ")
    for example in examples:
        argv = shlex.split(example)
        argv = argv[argv.index("scaleshift.cli") + 1:] if argv[0] == "torchrun" else argv[1:]
        args = parse_command_line(build_parser(), argv)
        cfg = load_recipe(args.recipe, args.overrides)   # the recipe exists, the overrides validate
        assert args.command == "train" and cfg.out_dir.startswith("runs/")


def test_list_models_filters_by_pattern_one_name_per_line(capsys):
    assert main(["list", "models", "vit_tiny*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == sorted(timm.list_models("vit_tiny*")) and "vit_tiny_patch16_224" in lines
    assert main(["list", "models", "--filter", "vit_tiny*"]) == 0   # the old flag: an alias
    assert capsys.readouterr().out.splitlines() == lines
    assert main(["list", "models", "scaleshift_*"]) == 0            # embedded backbones too
    assert capsys.readouterr().out.splitlines() == ["scaleshift_convnext32", "scaleshift_vit32"]
    assert main(["list", "models"]) == 0
    everything = capsys.readouterr().out.splitlines()
    assert len(everything) > 1000 and all(" " not in name for name in everything)


def test_list_all_stays_short_and_patterns_are_checked(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 80 and "scaleshift list models [PATTERN]" in out
    assert "  vtab/dtd_ssf" in out
    assert main(["list", "models", "no_such_model_*"]) == 2
    assert "no model name matches 'no_such_model_*'" in capsys.readouterr().err
    assert main(["list", "methods", "vit*"]) == 2
    assert "a pattern filters models or recipes" in capsys.readouterr().err


def test_list_recipes_from_the_package(capsys):
    assert main(["list", "recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == recipe_names() and len(lines) >= 42
    assert {"builtin/digits_ssf", "vtab/dtd_ssf", "cifar100/vit_b16_ssf"} <= set(lines)
    assert main(["list", "recipes", "vtab/*"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 19


def test_recipes_are_named_without_a_path_and_a_real_file_wins(tmp_path, monkeypatch):
    packaged = load_recipe("vtab/dtd_ssf")
    assert packaged.dataset == "vtab_dtd"
    for alias in ("vtab/dtd_ssf.yaml", "recipes/vtab/dtd_ssf.yaml"):
        assert load_recipe(alias) == packaged
    assert find_recipe("builtin/digits_ssf")[0] == "packaged recipe builtin/digits_ssf"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vtab").mkdir()
    (tmp_path / "vtab" / "dtd_ssf.yaml").write_text("dataset: digits\nepochs: 3\nval_split: val200\n")
    mine = load_recipe("vtab/dtd_ssf.yaml")               # a file at that path: the file
    assert (mine.dataset, mine.epochs) == ("digits", 3)
    assert load_recipe("vtab/dtd_ssf") == packaged         # no such file: the packaged one
    with pytest.raises(ScaleshiftError, match=r"neither a file nor a packaged recipe "
                       r"\(`scaleshift list recipes` lists them\); did you mean vtab/dtd_ssf"):
        load_recipe("vtab/dtd_sff")


def test_train_without_a_recipe_names_one(capsys):
    # the bare defaults are not a runnable config (the clean protocol needs a val_split), so
    # `scaleshift train` alone points to a recipe instead of to a protocol detail
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "builtin/digits_ssf" in err and "scaleshift list recipes" in err and "Traceback" not in err
    assert main(["train", "val_split=val", "--validate-only"]) == 0   # settings alone still work
    assert "the model builds (random init)" in capsys.readouterr().out
    # offline: a hub backbone is checked by its architecture, its weights are not fetched
    assert main(["train", "builtin/digits_ssf", "model=vit_tiny_patch16_224", "pretrained=true", "model_kwargs.img_size=32",
                 "--validate-only"]) == 0
    assert "its Hub weights were not fetched" in capsys.readouterr().out


def test_train_with_an_unknown_recipe_exits_2(capsys):
    assert main(["train", "vtab/nothing_here", "--validate-only"]) == 2
    err = capsys.readouterr().err
    assert "scaleshift list recipes" in err and "Traceback" not in err
    assert main(["train", "builtin/digits_ssf", "epochs=2", "--validate-only"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["bench", "--model", "vit_tiny_patch16_224", "--batch-size", "0"], "--batch-size must be an integer in 1.."),
    (["bench", "--model", "vit_tiny_patch16_224", "--batch-size", "-1"], "--batch-size must be an integer in 1.."),
    (["bench", "--model", "vit_tiny_patch16_224", "--batch-size", "2", "--rounds", "0"], "--rounds must be"),
    (["bench", "--model", "vit_tiny_patch16_224", "--batch-size", "2", "--size", "0"], "--size must be"),
    (["params", "model=no_such_model"], "unknown model 'no_such_model'"),
    (["methods", "sff"], "unknown method 'sff'"),
    (["params", "--model", "vit_tiny_patch16_224", "bogus=1"], "bogus is an option of no method"),
    (["params", "--model", "vit_tiny_patch16_224", "--method", "ssf", "layers=13"],
     "layers=13, but VisionTransformer has 12 blocks; use 0 to 12"),
    (["export", "runs/none", "--out", ""], "--out is empty; pass a path"),
    (["merge", "runs/none", "--out", " "], "--out is empty; pass a path"),
    (["train", "builtin/digits_ssf", "out_dir=", "--validate-only"], "out_dir is empty"),
    (["bench", "--model", "vit_tiny_patch16_224", "--batch-size", "2", "--parts", ""], "--parts is empty"),
    (["datasets", "check", "digits", "--root", "/nonexistent/digits"], "dataset root not found: /nonexistent"),
])
def test_out_of_range_counts_and_unknown_names_exit_2_before_any_work(argv, message, capsys):
    # a zero batch once reached a native kernel and killed the process (SIGFPE); a zero --size
    # or --epochs was read as "the default" and ran
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_demo_epochs_zero_is_refused_not_read_as_the_default(tmp_path, capsys):
    assert main(["demo", "--epochs", "0", "--out", str(tmp_path / "demo")]) == 2
    assert "epochs must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_methods_lists_one_method_when_named(capsys):
    assert main(["methods", "ssf", "bias"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert names == ["ssf", "bias"]


def test_a_refused_write_names_the_path_asked_for_not_the_temporary_one():
    from scaleshift.cli import written_path
    assert written_path("nb/run/.merged.9ojqlj6e") == "nb/run/merged"             # atomic_dir
    assert written_path("/a/.x.safetensors.ab_cd12e.tmp") == "/a/x.safetensors"   # atomic_path
    assert written_path("/a/.merged.old.abcdefgh") == "/a/merged"
    assert written_path("/a/.hidden") == "/a/.hidden" and written_path(b"/a/b.txt") == "/a/b.txt"

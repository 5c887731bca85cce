"""The command line: exact paper counts, merge-check on the paper's full-size backbones, errors."""
import json
import subprocess
import sys

import pytest

from scaleshift.cli import main


def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("model, expected", [
    ("vit_base_patch16_224", 282_724),
    *(pytest.param(m, n, marks=pytest.mark.slow) for m, n in [   # the same counts as test_params
        ("swin_base_patch4_window7_224", 369_764), ("convnext_base", 359_780), ("as_mlp_base", 369_252)])])
def test_params_ssf(capsys, model, expected):
    code, out = run_json(capsys, "params", "--model", model, "--method", "ssf", "--num-classes", "100")
    assert code == 0
    assert out["trainable"] == expected and out["model"] == model and out["method"] == "ssf"
    assert out["total"] > expected


@pytest.mark.slow   # vit_base built once per method
def test_params_every_method_with_options(capsys):
    expected = {"linear": 76_900, "bias": 179_812, "adapter": 307_444, "full": 85_875_556}
    code, rows = run_json(capsys, "params", "--model", "vit_base_patch16_224", "--num-classes", "100")
    assert code == 0
    assert {r["method"]: r["trainable"] for r in rows if r["method"] in expected} == expected
    for method, prompts, count in (("vpt_shallow", 200, 230_500), ("vpt_deep", 50, 537_700)):
        code, out = run_json(capsys, "params", "--model", "vit_base_patch16_224", "--method", method,
                             "--num-classes", "100", "--opt", f"prompts={prompts}")
        assert out["trainable"] == count


@pytest.mark.slow   # full-size backbones at 224 px, built twice
@pytest.mark.parametrize("model", ["vit_base_patch16_224", "swin_base_patch4_window7_224",
                                   "convnext_base", "mixer_b16_224"])
@pytest.mark.parametrize("profile", ["paper", "all"])
def test_merge_check_ssf_on_paper_backbones(capsys, model, profile):
    code, out = run_json(capsys, "merge-check", "--model", model, "--method", "ssf",
                         "--num-classes", "100", "--opt", f"profile={profile}")
    assert code == 0
    assert out["extra_params"] == 0 and out["plain_strict_load"] is True
    assert out["max_rel_diff"] <= 1e-5 and out["non_mergeable"] == []


@pytest.mark.slow   # full-size backbones at 224 px, built twice
@pytest.mark.parametrize("model", ["vit_base_patch16_224", "swin_base_patch4_window7_224",
                                   "convnext_base"])
@pytest.mark.parametrize("method", ["bias", "lora"])
def test_merge_check_bias_and_lora(capsys, model, method):
    code, out = run_json(capsys, "merge-check", "--model", model, "--method", method,
                         "--num-classes", "100")
    assert code == 0
    assert out["max_rel_diff"] <= 1e-5 and out["plain_strict_load"] is True
    assert out["extra_params"] == 0


@pytest.mark.slow   # full-size backbones at 224 px, built twice
@pytest.mark.parametrize("method, opts", [("adapter", []), ("vpt_shallow", ["--opt", "prompts=10"]),
                                          ("vpt_deep", ["--opt", "prompts=10"])])
def test_merge_check_lists_non_mergeable(capsys, method, opts):
    code, out = run_json(capsys, "merge-check", "--model", "vit_base_patch16_224", "--method",
                         method, "--num-classes", "10", *opts)
    assert code == 0
    assert out["non_mergeable"] and out["plain_strict_load"] is False and out["extra_params"] > 0


@pytest.mark.slow
def test_bad_option_exits_2_with_a_clear_message():
    proc = subprocess.run([sys.executable, "-m", "scaleshift.cli", "params", "--model",
                           "vit_base_patch16_224", "--method", "ssf", "--opt", "layerz=2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown option(s) ['layerz']" in proc.stderr and "valid options" in proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["params", "--model", "no_such_model", "--method", "ssf"], "unknown model"),
    (["params", "--method", "ssff"], "unknown method"),
    (["params", "--method", "ssf", "--opt", "layers"], "key=value"),
    (["params", "--model", "convnext_base", "--method", "vpt_deep"], "ViT and Swin"),
])
def test_errors_name_the_problem(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err

"""The cost benchmark on a tiny ViT: every method runs, ratios are finite, files are written."""
import json
import math

import pytest

from scaleshift.bench import VARIANTS, goals, measure_memory, run_bench

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)


def test_every_variant_runs_and_ratios_are_finite(tmp_path):
    result = run_bench("vit_tiny_patch16_224", batch=8, rounds=1, model_kwargs=TINY,
                       out=str(tmp_path), with_memory=False)
    ran = {(r["variant"], r["kind"]) for r in result["rows"]}
    expected = {(v.label, k) for v in VARIANTS for k, on in (("train", v.train), ("infer", v.infer)) if on}
    assert ran == expected
    assert all(math.isfinite(r["seconds"]) and r["seconds"] > 0 and math.isfinite(r["time_ratio"])
               for r in result["rows"])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert {g["goal"] for g in saved["goals"]} == {g["goal"] for g in goals(result)}
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "bench.csv").read_text().startswith("variant,kind,seconds")


def test_convnext_skips_prompt_methods():
    result = run_bench("convnext_atto", batch=2, rounds=1, size=32, with_memory=False,
                       model_kwargs=dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), conv_mlp=False))
    assert not any(r["variant"].startswith("vpt") for r in result["rows"])


def test_memory_probes_see_what_full_fine_tuning_adds():
    import torch
    variants = [v for v in VARIANTS if v.label in ("plain", "full", "linear")]
    memory = measure_memory("vit_tiny_patch16_224", dict(TINY, embed_dim=128), 32,
                            torch.device("cpu"), None, variants)
    # full fine-tuning adds gradients and two AdamW moments: 3 x 4 bytes per parameter
    params_mb = sum(p.numel() for p in __import__("scaleshift").create_model(
        "vit_tiny_patch16_224", 10, **dict(TINY, embed_dim=128)).parameters()) * 4 / 2**20
    assert memory["full/train"] > memory["plain/infer"] + 2 * params_mb
    assert memory["linear/train"] < memory["full/train"]


def test_profile_splits_every_profiled_step(tmp_path):
    from scaleshift.bench import format_table
    result = run_bench("vit_tiny_patch16_224", batch=4, rounds=1, model_kwargs=TINY, out=str(tmp_path),
                       with_memory=False, profile=["ssf", "bias"])
    for label in ("ssf", "bias"):
        p = result["profile"][label]
        assert p["matmul_conv_attention_ms"] > 0 and p["other_ms"] > 0
        assert abs(p["matmul_conv_attention_ms"] + p["other_ms"] - p["self_ms"]) < 1e-6
        assert "aten::" in (tmp_path / f"profile_{label}.txt").read_text()
    table = format_table(result)
    assert "floor: bias (BitFit)" in table and "profile ssf" in table


def test_profile_refuses_an_inference_only_variant():

    from scaleshift.errors import ScaleshiftError
    with pytest.raises(ScaleshiftError, match="not a trained variant"):
        run_bench("vit_tiny_patch16_224", batch=2, rounds=1, model_kwargs=TINY, with_memory=False,
                  profile=["ssf_merged"])


def test_modes_time_full_bias_and_ssf_again_beside_fp32_eager(tmp_path):
    """--modes bf16: the three training steps again under bf16 autocast, in the same rounds;
    results.md holds every ratio with the command and the machine."""
    result = run_bench("vit_tiny_patch16_224", batch=4, rounds=1, model_kwargs=TINY, out=str(tmp_path),
                       with_memory=False, modes=["bf16"], command="scaleshift bench (test)")
    assert [(r["mode"], r["variant"]) for r in result["modes"]] == [("bf16", v) for v in ("full", "bias", "ssf")]
    assert all(math.isfinite(r["time_ratio"]) and math.isfinite(r["vs_eager"]) for r in result["modes"])
    text = (tmp_path / "results.md").read_text()
    for needle in ("Command: `scaleshift bench (test)`", "torch 2.", "## Goals", "SSF training step time / bias",
                   "## Training step by precision and compilation", "| bf16 | ssf |", "Load average"):
        assert needle in text


def test_merge_memory_probe_sees_the_merged_model():
    """The probe runs scaleshift.merge in a fresh process: the merged model's bytes are the
    plain model's, and the growth it reports holds at least them (the goal itself is checked by
    `scaleshift bench`, not here)."""
    from scaleshift.bench import _fresh_process
    probe = _fresh_process("merge_memory_probe", ["vit_tiny_patch16_224", dict(TINY, embed_dim=256, depth=4)])
    assert probe["merged_model_mb"] < probe["model_mb"] and probe["merged_model_mb"] > 0.95 * probe["model_mb"]
    assert probe["peak_growth_mb"] >= 0.9 * probe["merged_model_mb"]
    assert probe["growth_ratio"] == pytest.approx(probe["peak_growth_mb"] / probe["model_mb"])


def test_bad_modes_and_parts_exit_2(capsys):
    from scaleshift.cli import main
    for flag in (["--modes", "fp8"], ["--parts", "speed"]):
        assert main(["bench", "--model", "vit_tiny_patch16_224", "--batch-size", "2", *flag]) == 2
        assert flag[1] in capsys.readouterr().err


"""scaleshift pretrain (tiny runs, resume) and the embedded pretrained backbones."""
from __future__ import annotations

import argparse
import shutil

import pytest
import timm
import torch

import scaleshift
from scaleshift.backbones import embedded
from scaleshift.errors import ScaleshiftError
from scaleshift.io import file_sha256
from scaleshift.merge import perturb_trainable
from scaleshift.methods import config_of
from scaleshift.pretrain import add_pretrain_parser, run_pretrain

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow


def _args(out, *extra):
    parser = argparse.ArgumentParser()
    add_pretrain_parser(parser.add_subparsers())
    return parser.parse_args(["pretrain", "--arch", "vit_test", "--data", "leaves", "--steps", "4",
                              "--batch-size", "8", "--ckpt-every", "2", "--log-every", "1",
                              "--threads", "1", "--out", str(out), *extra])


def test_pretrain_resume_matches_uninterrupted_run(tmp_path):
    args = _args(tmp_path / "a", "--stop-at", "2")
    assert args.func(args) == 0
    ckpt = tmp_path / "a" / "checkpoint.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["step"] == 2
    assert not list((tmp_path / "a").glob("*.tmp"))           # written atomically, no leftovers
    with pytest.raises(ScaleshiftError, match="--resume"):     # refuses to overwrite silently
        run_pretrain(_args(tmp_path / "a"))
    with pytest.raises(ScaleshiftError, match="other settings"):
        run_pretrain(_args(tmp_path / "a", "--resume", "--lr", "0.01"))
    resumed = run_pretrain(_args(tmp_path / "a", "--resume"))
    assert resumed["step"] == 4
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["step"] == 4

    straight = run_pretrain(_args(tmp_path / "b"))
    a = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", map_location="cpu",
                   weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    # the exported backbone loads through the ordinary local-weights path
    model = scaleshift.create_model(resumed["timm_name"], 3, pretrained=straight["file"],
                                    **resumed["kwargs"])
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ScaleshiftError, match="no checkpoint"):
        run_pretrain(_args(tmp_path / "none", "--resume"))


def test_shipped_weights_within_budget():
    total = sum((embedded.WEIGHTS_DIR / spec["file"]).stat().st_size
                for spec in embedded.EMBEDDED.values())
    assert total <= 20 * 1024 * 1024


@pytest.mark.parametrize("name", embedded.embedded_names())
def test_embedded_loads_and_ssf_merges_exactly(name):
    spec = embedded.EMBEDDED[name]
    path = embedded.embedded_path(name)
    assert file_sha256(path) == spec["sha256"]
    model = scaleshift.create_model(name, num_classes=10, pretrained=True).eval()
    # the pretrained weights are really loaded (not random init), the head is new
    from safetensors.torch import load_file
    stored = load_file(str(path))
    assert not any(k.startswith("head.fc") or k in ("head.weight", "head.bias") for k in stored)
    own = model.state_dict()
    for key, value in stored.items():
        torch.testing.assert_close(own[key], value)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert model(x).shape == (2, 10)
    assert scaleshift.create_model(name, num_classes=1000, pretrained=True)(x).shape == (2, 1000)

    scaleshift.apply(model, method="ssf")
    assert config_of(model)["options"]["profile"] == "paper"
    perturb_trainable(model, seed=1)
    model.eval()
    reference = model(x)
    merged = scaleshift.merge(model).eval()
    plain = timm.create_model(spec["timm_name"], num_classes=10, **spec["kwargs"]).eval()
    plain.load_state_dict(merged.state_dict(), strict=True)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in plain.parameters())
    torch.testing.assert_close(plain(x), reference, atol=1e-5, rtol=1e-5)


def test_tampered_or_missing_weights_are_refused(tmp_path, monkeypatch):
    name = embedded.embedded_names()[0]
    spec = embedded.EMBEDDED[name]
    shutil.copy(embedded.WEIGHTS_DIR / spec["file"], tmp_path / spec["file"])
    monkeypatch.setattr(embedded, "WEIGHTS_DIR", tmp_path)
    data = bytearray((tmp_path / spec["file"]).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / spec["file"]).write_bytes(bytes(data))
    with pytest.raises(ScaleshiftError, match="sha256"):
        scaleshift.create_model(name, num_classes=10, pretrained=True)
    (tmp_path / spec["file"]).unlink()
    with pytest.raises(ScaleshiftError, match="missing"):
        scaleshift.create_model(name, num_classes=10, pretrained=True)
    with pytest.raises(ScaleshiftError, match="unknown embedded"):
        embedded.embedded_path("no_such_backbone")


def test_distillation_regresses_the_teacher_and_resumes_exactly(tmp_path):
    """--objective distill: the student learns to predict the (real ImageNet) teacher's
    standardised features, and an interrupted run resumes to the same weights."""
    distill = ("--objective", "distill", "--teacher-size", "32", "--pool", "64", "--lr", "3e-3")
    args = _args(tmp_path / "a", *distill, "--stop-at", "2")
    assert args.func(args) == 0
    resumed = run_pretrain(_args(tmp_path / "a", *distill, "--resume"))
    straight = run_pretrain(_args(tmp_path / "b", *distill))
    assert resumed["sha256"] == straight["sha256"]
    assert straight["config"]["teacher"] == "tf_efficientnet_lite0"
    assert "distill" in straight["history"][-1]
    run_pretrain(_args(tmp_path / "c", *distill, "--steps", "30"))
    history = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)["history"]
    first = sum(h["distill"] for h in history[:5]) / 5
    last = sum(h["distill"] for h in history[-5:]) / 5
    assert last < first, (first, last)


def test_distillation_init_must_match_the_architecture(tmp_path):
    with pytest.raises(ScaleshiftError, match="--init scaleshift_vit32 is not a vit_test backbone"):
        run_pretrain(_args(tmp_path / "a", "--objective", "distill", "--init", "scaleshift_vit32"))

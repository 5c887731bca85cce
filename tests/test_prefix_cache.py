"""Cached-prefix SSF (layers=last:k): the suffix on the cached prefix computes what the whole model
computes, the engine uses the cache when it is exact and refuses or explains when it is not."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import scaleshift
from scaleshift.cli import main
from scaleshift.errors import ScaleshiftError
from scaleshift.merge import perturb_trainable
from scaleshift.prefix_cache import Suffix, prefix_cut, prefix_forward

from test_engine import history

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow

VIT4 = dict(img_size=32, patch_size=8, depth=4, embed_dim=32, num_heads=2)
RUN = ["model_kwargs={img_size: 32, patch_size: 8, depth: 4, embed_dim: 32, num_heads: 2}",
       "dataset=digits", "train_split=train800", "val_split=val200", "test_split=test",
       "input_size=32", "batch_size=50", "lr=3e-3", "epochs=2", "log_every=100",
       "method_options.layers=last:2"]


def last_k_model(k: int = 2, **kwargs):
    torch.manual_seed(0)
    model = scaleshift.create_model("vit_tiny_patch16_224", 5, **dict(VIT4, **kwargs))
    scaleshift.apply(model, "ssf", layers=f"last:{k}")
    perturb_trainable(model)
    return model


@pytest.mark.parametrize("k", [1, 2, 4])
def test_cached_logits_and_gradients_equal_uncached_last_k_ssf(k):
    model = last_k_model(k)
    assert prefix_cut(model) == 4 - k
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(6) % 5

    def step(forward):
        model.zero_grad(set_to_none=True)
        logits = forward()
        F.cross_entropy(logits, labels).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    model.train()
    logits, grads = step(lambda: model(images))
    with torch.no_grad():
        cached = prefix_forward(model.eval(), images, prefix_cut(model))
    suffix = Suffix(model, prefix_cut(model)).train()
    cached_logits, cached_grads = step(lambda: suffix(cached))
    assert torch.equal(cached_logits, logits)
    assert grads.keys() == cached_grads.keys() and len(grads) > 2
    assert all(torch.equal(grads[n], cached_grads[n]) for n in grads)


def test_a_trainable_parameter_before_the_cut_is_refused():
    model = last_k_model()
    model.patch_embed.proj.weight.requires_grad_(True)
    with pytest.raises(ScaleshiftError, match="patch_embed.proj.weight trains before block 2"):
        prefix_cut(model)


def test_a_random_prefix_is_refused():
    with pytest.raises(ScaleshiftError, match=r"blocks.1.drop_path1 \(DropPath\) is random"):
        prefix_cut(last_k_model(drop_path_rate=0.1))


def test_other_architectures_are_refused():
    model = scaleshift.create_model("convnext_atto", 5, depths=(1, 1, 2, 1), dims=(8, 16, 24, 32))
    scaleshift.apply(model, "ssf", layers="last:1")
    with pytest.raises(ScaleshiftError, match="VisionTransformer"):
        prefix_cut(model)


def test_cached_run_equals_the_uncached_run_and_reports_its_epoch_times(tmp_path, capsys):
    """The same training on cached prefix outputs (in memory, and spilled to files with a
    0 MB budget) and on images: the same losses and accuracies, per-epoch times logged."""
    assert main(["train", *RUN, f"out_dir={tmp_path / 'cached'}"]) == 0
    assert "prefix cached: blocks 0-1" in capsys.readouterr().out
    assert main(["train", *RUN, "cache_prefix_mb=0", f"out_dir={tmp_path / 'spilled'}"]) == 0
    assert main(["train", *RUN, "cache_prefix=false", f"out_dir={tmp_path / 'images'}"]) == 0
    images = history(tmp_path / "images")
    for name in ("cached", "spilled"):
        rows = history(tmp_path / name)
        for a, b in zip(rows, images, strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
            assert a["val_top1"] == b["val_top1"] and a["test_top1"] == b["test_top1"]
            assert a["epoch_seconds"] >= a["seconds"] > 0
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results["prefix_cache"]["cut"] == 2 and results["seconds_per_epoch"] > 0
        stored = [s["stored"] for s in results["prefix_cache"]["splits"].values()]
        assert len(stored) == 3 and all((where == "memory") == (name == "cached") for where in stored)
        assert not (tmp_path / name / "prefix_cache").exists()   # spilled files removed at the end
    assert json.loads((tmp_path / "images" / "results.json").read_text())["prefix_cache"] is None
    # the adapter is an ordinary SSF adapter: eval rebuilds the model and gets the same number
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "cached"), "--merged"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(
        json.loads((tmp_path / "cached" / "results.json").read_text())["reported"]["top1"])


def test_augmentation_falls_back_to_images_with_a_note(tmp_path, capsys):
    assert main(["train", *RUN, "epochs=1", "mixup=0.2", f"out_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert "the prefix is not cached: mixup=0.2 changes the training images" in out
    assert json.loads((tmp_path / "run" / "results.json").read_text())["prefix_cache"] is None


@pytest.mark.parametrize("override, message", [
    ("augment=fgvc", "cache_prefix=true needs a deterministic training transform"),
    ("random_erasing=0.25", "random_erasing=0.25 changes the images every epoch"),
    ("drop_path=0.1", "blocks.1.drop_path1 (DropPath) is random in training"),
    ("method_options.layers=last:0", "'last:0' trains no block"),
    ("method_options.layers=last:9", "has 4 blocks; use last:1 to last:4"),
])
def test_cache_prefix_true_refuses_what_would_make_the_cache_wrong(tmp_path, override, message, capsys):
    assert main(["train", *RUN, "cache_prefix=true", override, f"out_dir={tmp_path / 'x'}"]) == 2
    assert message in capsys.readouterr().err

"""Figure 4 / 5 analyses on tiny runs: histograms count every parameter, CKA is 1 for a run
against itself, the commands write their PNGs."""
import json

import pytest
import torch

from scaleshift.analyze import linear_cka, similarity, weight_histograms
from scaleshift.cli import main

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow

TINY = ["model_kwargs={img_size: 32, patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
        "dataset=digits", "train_split=train800", "val_split=val200", "test_split=test",
        "input_size=32", "batch_size=50", "epochs=1", "log_every=100"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for method in ("full", "ssf", "vpt_deep"):
        assert main(["train", *TINY, f"method={method}", f"out_dir={root / method}"]) == 0
    return root


def test_linear_cka_properties():
    x = torch.randn(100, 8)
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ torch.linalg.qr(torch.randn(8, 8))[0] + 1) == pytest.approx(1.0)
    assert linear_cka(x, torch.randn(100, 8)) < 0.5


def test_histograms_count_every_backbone_parameter(runs):
    hist = weight_histograms(runs / "ssf", vs=runs / "full", bins=50)
    import scaleshift
    model = scaleshift.create_model("vit_tiny_patch16_224", 10, img_size=32, patch_size=8,
                                    depth=2, embed_dim=32, num_heads=2)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    n_bias = sum(v.numel() for k, v in backbone.items() if k.endswith("bias"))
    n_weight = sum(v.numel() for v in backbone.values()) - n_bias
    for label in hist["weight"]["counts"]:
        assert sum(hist["weight"]["counts"][label]) == hist["weight"]["totals"][label] == n_weight
        assert sum(hist["bias"]["counts"][label]) == hist["bias"]["totals"][label] == n_bias
    assert len(hist["weight"]["counts"]) == 3     # pretrained, ssf merged, full


def test_similarity_with_itself_is_one_and_commands_write_pngs(runs, tmp_path):
    result = similarity([runs / "full", runs / "full", runs / "ssf", runs / "vpt_deep"], "digits",
                        samples=64)
    assert result["runs"][0]["cka"] == pytest.approx([1.0, 1.0])
    assert all(0 <= v <= 1 + 1e-9 for run in result["runs"] for v in run["cka"])
    assert main(["analyze", "similarity", str(runs / "full"), str(runs / "ssf"),
                 str(runs / "vpt_deep"), "--data", "digits", "--samples", "64",
                 "--out", str(tmp_path)]) == 0
    assert main(["analyze", "weights", str(runs / "ssf"), "--vs", str(runs / "full"),
                 "--out", str(tmp_path)]) == 0
    for name in ("similarity.png", "weights.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "similarity.json").read_text())["samples"] == 64

"""Paper-exact trainable-parameter counts (the Params columns of the SSF paper), counted on the meta device."""
import pytest
import torch

import scaleshift


def count(model_name, method="ssf", num_classes=100, **options):
    with torch.device("meta"):
        model = scaleshift.create_model(model_name, num_classes=num_classes)
        scaleshift.apply(model, method, **options)
    return scaleshift.trainable_parameters(model)


@pytest.mark.parametrize("model_name, expected", [
    ("vit_base_patch16_224", 282_724),
    ("swin_base_patch4_window7_224", 369_764),
    ("convnext_base", 359_780),
    ("as_mlp_base", 369_252),
])
def test_ssf_counts_match_paper(model_name, expected):
    assert count(model_name) == expected


@pytest.mark.slow
@pytest.mark.parametrize("options, expected, paper_millions", [
    (dict(layers=0), 76_900, 0.08),          # Table 6a
    (dict(layers=2), 113_764, 0.11),
    (dict(layers=4), 147_556, 0.15),
    (dict(layers=8), 215_140, 0.22),
    (dict(layers=12), 282_724, 0.28),
    (dict(exclude="mlp"), 190_564, 0.19),    # Table 6b
    (dict(exclude="attn"), 208_996, 0.21),
    (dict(exclude="embed"), 281_188, 0.28),
    (dict(exclude="norm"), 245_860, 0.25),
    (dict(scale=False), 179_812, 0.18),      # Table 6d
    (dict(shift=False), 179_812, 0.18),
    (dict(only_norm=True), 113_764, 0.11),
    (dict(scalar_scale=True), 179_886, 0.18),
])
def test_table6_ablation_counts(options, expected, paper_millions):
    got = count("vit_base_patch16_224", **options)
    assert got == expected
    assert round(got / 1e6, 2) == paper_millions


@pytest.mark.parametrize("method, options, expected", [
    ("linear", {}, 76_900),
    ("bias", {}, 179_812),
    ("adapter", {}, 307_444),
    ("vpt_shallow", dict(prompts=200), 230_500),
    ("vpt_deep", dict(prompts=50), 537_700),
    ("full", {}, 85_875_556),
])
def test_baseline_counts_match_paper(method, options, expected):
    assert count("vit_base_patch16_224", method, **options) == expected


def test_swin_patch_merging_is_left_out_like_the_official_code():
    # The official PatchMerging SSF is dead code; with it the count would be 376,932.
    assert count("swin_base_patch4_window7_224") != 376_932


def test_init_options_change_values_not_counts():
    for init in ("normal", "constant", "uniform", "trunc_normal", "random"):
        assert count("vit_base_patch16_224", init=init) == 282_724

"""SSF never silently becomes linear probing: on every timm family it either scales and shifts
layers outside the classifier head, merging exactly into the plain architecture, or refuses
with the layer types it passed over."""
from functools import partial

import pytest
import timm
import torch
from timm.layers import GroupNormAct, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame

import scaleshift
from scaleshift.merge import merge_check, merge_with_report, perturb_trainable
from scaleshift.methods import get_method
from scaleshift.methods.ssf import ScaleShift
from scaleshift.models import classifier_parameter_names

from conftest import TINY

SMALL_RESNETV2 = dict(channels=(16, 32, 64, 128), stem_chs=16)
# (timm name, kwargs that keep it small, input size); random init
FAMILIES = [
    *TINY.values(),
    ("test_resnet", {}, (3, 32, 32)),
    ("test_byobnet", {}, (3, 32, 32)),
    ("test_efficientnet", {}, (3, 32, 32)),
    ("tf_efficientnet_lite0", {}, (3, 32, 32)),
    ("mobilenetv3_small_050", {}, (3, 32, 32)),
    ("regnetx_002", {}, (3, 32, 32)),
    ("levit_128s", dict(img_size=64), (3, 64, 64)),
    ("coat_lite_tiny", dict(img_size=32, embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1),
                            mlp_ratios=(2, 2, 2, 2)), (3, 32, 32)),
    # weight-standardised convolutions: BiT's StdConv2d (+ GroupNorm), the TF-padded one of the
    # ViT hybrids, NFNet's ScaledStdConv2d (no norm layers at all: SSF goes into the gains)
    ("resnetv2_18", dict(conv_layer=StdConv2d, norm_layer=partial(GroupNormAct, num_groups=8),
                         **SMALL_RESNETV2), (3, 32, 32)),
    ("vit_tiny_r_s16_p8_224", dict(img_size=32, depth=1), (3, 32, 32)),
    ("test_nfnet", {}, (3, 32, 32)),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,size", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_ssf_inserts_outside_the_head_and_merges_exactly(name, kwargs, size):
    torch.manual_seed(0)
    model = scaleshift.create_model(name, num_classes=5, **kwargs)
    head = {n.rpartition(".")[0] for n in classifier_parameter_names(model)}
    scaleshift.apply(model, "ssf")
    outside = [n for n, m in model.named_modules() if isinstance(m, ScaleShift) and n not in head]
    assert outside, f"{name}: SSF found no point outside the head"
    report = merge_check(name, "ssf", 5, model_kwargs=kwargs, input_size=size)
    assert report["plain_strict_load"] and report["non_mergeable"] == []
    assert report["extra_params"] == 0
    assert report["max_rel_diff"] < 1e-4, report


@pytest.mark.parametrize("conv", [ScaledStdConv2d, ScaledStdConv2dSame])
def test_a_scale_after_a_gain_conv_folds_into_its_gain(conv):
    torch.manual_seed(0)
    layer = conv(4, 6, 3, bias=True)
    with torch.no_grad():
        layer.gain.uniform_(0.5, 2.0)
    wrapper = ScaleShift(layer, 6, "output", 1)
    with torch.no_grad():
        wrapper.ssf_scale.uniform_(-2.0, 2.0)
        wrapper.ssf_shift.normal_()
    x = torch.randn(2, 4, 9, 9)
    reference = layer(x) * wrapper.ssf_scale.view(1, -1, 1, 1) + wrapper.ssf_shift.view(1, -1, 1, 1)
    assert torch.allclose(wrapper(x), reference, atol=1e-5)
    base = {f"conv.{k}": v for k, v in layer.state_dict().items()}
    trained = {"conv.ssf_scale": wrapper.ssf_scale.detach(), "conv.ssf_shift": wrapper.ssf_shift.detach()}
    merged, not_folded = get_method("ssf").merge_state(base, trained, {})
    assert not_folded == [] and merged["conv.weight"] is base["conv.weight"]
    plain = conv(4, 6, 3, bias=True)
    plain.load_state_dict({k.removeprefix("conv."): v for k, v in merged.items()})
    assert torch.allclose(plain(x), reference, atol=1e-5)


def test_a_model_with_nothing_to_scale_outside_the_head_is_refused():
    # StdConv2d only, norms without affine: nothing SSF can fold into
    model = timm.create_model("resnetv2_18", num_classes=5, conv_layer=StdConv2dSame,
                              norm_layer=partial(GroupNormAct, num_groups=8), **SMALL_RESNETV2)
    for norm in [m for m in model.modules() if isinstance(m, GroupNormAct)]:
        norm.weight = norm.bias = None
    with pytest.raises(scaleshift.ScaleshiftError, match="StdConv2dSame.*linear probing"):
        scaleshift.apply(model, "ssf")


def test_a_merged_nfnet_is_the_plain_architecture():
    torch.manual_seed(0)
    model = scaleshift.apply(scaleshift.create_model("test_nfnet", num_classes=5), "ssf")
    perturb_trainable(model)
    merged, not_folded = merge_with_report(model.eval())
    assert not_folded == [] and not any(isinstance(m, ScaleShift) for m in merged.modules())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(merged.eval()(x), model(x), rtol=1e-4, atol=1e-5)

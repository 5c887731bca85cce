"""SSF itself: channel layout by op, inits, options, the generic profile on many families."""
import pytest
import torch
import torch.nn as nn

import scaleshift
from scaleshift.merge import perturb_trainable
from scaleshift.methods.ssf import ScaleShift, init_scale_shift

from conftest import make_input, make_model


def test_conv_output_scales_channels_even_when_width_equals_channels():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    wrapper = ScaleShift(conv, 8, "output", channel_dim=1)
    init_scale_shift(wrapper, "normal", 0.5)
    x = torch.randn(2, 3, 8, 8)                     # output (2, 8, 8, 8): W == C
    expected = conv(x) * wrapper.ssf_scale.view(1, 8, 1, 1) + wrapper.ssf_shift.view(1, 8, 1, 1)
    torch.testing.assert_close(wrapper(x), expected)


def test_linear_output_scales_last_dim_even_when_tokens_equal_channels():
    linear = nn.Linear(4, 6)
    wrapper = ScaleShift(linear, 6, "output", channel_dim=-1)
    init_scale_shift(wrapper, "normal", 0.5)
    x = torch.randn(2, 6, 4)                        # output (2, 6, 6): N == C
    torch.testing.assert_close(wrapper(x), linear(x) * wrapper.ssf_scale + wrapper.ssf_shift)


def test_norm_affine_mode_equals_scale_shift_after_the_norm():
    for norm, x in ((nn.LayerNorm(6), torch.randn(2, 5, 6)),
                    (nn.GroupNorm(1, 6), torch.randn(2, 6, 4, 4)),
                    (nn.BatchNorm2d(6).eval(), torch.randn(2, 6, 4, 4))):
        wrapper = ScaleShift(norm, 6, "affine")
        init_scale_shift(wrapper, "normal", 0.5)
        dim = -1 if isinstance(norm, nn.LayerNorm) else 1
        shape = [1] * x.ndim
        shape[dim] = -1
        expected = norm(x) * wrapper.ssf_scale.view(shape) + wrapper.ssf_shift.view(shape)
        torch.testing.assert_close(wrapper(x), expected)


@pytest.mark.parametrize("channel_dim, shape", [(-1, (2, 5, 6)), (1, (2, 6, 3, 3))])
@pytest.mark.parametrize("use_scale, use_shift, scalar", [
    (True, True, False), (True, False, False), (False, True, False), (True, True, True)])
@pytest.mark.parametrize("scale_value", [1.0, 1e-6])     # 1e-6: the save-the-input fallback
def test_scale_shift_function_gradients(channel_dim, shape, use_scale, use_shift, scalar, scale_value):
    from scaleshift.methods.ssf import ScaleShiftOutputFn
    torch.manual_seed(0)
    y = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    channels = shape[channel_dim]
    scale = (scale_value + 0.1 * torch.randn(1 if scalar else channels, dtype=torch.float64)
             if scale_value == 1.0 else torch.full((1 if scalar else channels,), scale_value,
                                                   dtype=torch.float64)).requires_grad_() if use_scale else None
    shift = torch.randn(channels, dtype=torch.float64, requires_grad=True) if use_shift else None
    inputs = (y, scale, shift, channel_dim)
    assert torch.autograd.gradcheck(lambda *a: ScaleShiftOutputFn.apply(*a), inputs)


FROZEN_LAYERS = [nn.Linear(5, 6), nn.Linear(5, 6, bias=False), nn.Conv1d(4, 6, 3, padding=1),
                 nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1),
                 nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6), nn.Conv3d(2, 4, 2)]
SCALE_SHIFT_CASES = [(True, True, False), (True, False, False), (False, True, False), (True, True, True)]


# a shift after a bias-free layer does not fold, so that layer only ever gets a scale
@pytest.mark.parametrize("layer, use_scale, use_shift, scalar", [
    pytest.param(layer, *case, id=f"{layer!r}-{case}",
                 marks=[pytest.mark.slow] if getattr(layer, "groups", 1) > 1 or isinstance(layer, nn.Conv3d) else [])
    for layer in FROZEN_LAYERS
    for case in SCALE_SHIFT_CASES if layer.bias is not None or not case[1]])
def test_frozen_layer_function_gradients(layer, use_scale, use_shift, scalar):
    """The fused training path (folded weight forward, input-grad-only backward) against
    autograd through layer(x) * scale + shift, in float64."""
    from scaleshift.methods.ssf import FrozenLayerScaleShiftFn
    torch.manual_seed(0)
    layer = layer.double().requires_grad_(False)
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    spatial_dims = layer.weight.ndim - 2   # gradcheck's cost grows with the input's size: 3-D stays small
    x = torch.randn((3, 7, 5) if isinstance(layer, nn.Linear) else
                    (2, layer.in_channels, *([(6, 5, 3)[spatial_dims - 1]] * spatial_dims)),
                    dtype=torch.float64, requires_grad=True)
    scale = (1 + 0.3 * torch.randn(1 if scalar else channels, dtype=torch.float64)).requires_grad_() \
        if use_scale else None
    shift = torch.randn(channels, dtype=torch.float64, requires_grad=True) if use_shift else None
    assert torch.autograd.gradcheck(lambda x, s, b: FrozenLayerScaleShiftFn.apply(x, s, b, layer),
                                    (x, scale, shift))
    shape = [1] * x.ndim
    shape[-1 if isinstance(layer, nn.Linear) else 1] = -1
    reference = layer(x)
    reference = reference * scale.view(shape) if use_scale else reference
    reference = reference + shift.view(shape) if use_shift else reference
    torch.testing.assert_close(FrozenLayerScaleShiftFn.apply(x, scale, shift, layer), reference)


def test_training_path_with_trainable_base_weights_still_trains_them():
    linear = nn.Linear(4, 6)
    wrapper = ScaleShift(linear, 6, "output")
    init_scale_shift(wrapper, "normal", 0.5)
    wrapper(torch.randn(3, 4)).sum().backward()
    assert linear.weight.grad is not None and wrapper.ssf_scale.grad is not None


@pytest.mark.parametrize("layer", [nn.Linear(8, 6), nn.Conv2d(8, 6, 3, padding=1)], ids=["linear", "conv"])
def test_fused_training_path_under_bf16_autocast(layer):
    """Under autocast the fused path keeps the folded bf16 weight of its forward for the input
    gradient; gradients match autograd through the folded layer run under the same autocast."""
    torch.manual_seed(0)
    wrapper = ScaleShift(layer.requires_grad_(False), 6, "output", -1 if isinstance(layer, nn.Linear) else 1)
    init_scale_shift(wrapper, "normal", 0.5)
    x = torch.randn((4, 8) if isinstance(layer, nn.Linear) else (2, 8, 5, 5), requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = wrapper(x)
    assert out.dtype == torch.bfloat16 and out.grad_fn.name() == "FrozenLayerScaleShiftFnBackward"
    out.float().square().sum().backward()
    assert x.grad.dtype == torch.float32 and wrapper.ssf_scale.grad.dtype == torch.float32
    x_ref = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = wrapper._forward_folded(x_ref)   # autograd through the folded weight and bias
    torch.testing.assert_close(out, reference)
    grads = torch.autograd.grad(reference.float().square().sum(),
                                (x_ref, wrapper.ssf_scale, wrapper.ssf_shift))
    torch.testing.assert_close(x.grad, grads[0])
    torch.testing.assert_close(wrapper.ssf_shift.grad, grads[2], rtol=1e-2, atol=1e-2)
    # the scale's gradient comes from the saved bf16 output, autograd's from the cast weight:
    # both round to bf16's 8-bit mantissa, so they agree as vectors, not digit by digit
    assert (wrapper.ssf_scale.grad - grads[1]).norm() < 0.02 * grads[1].norm()


def test_inference_path_with_folded_weights_equals_the_training_path():
    for family in ("vit", "convnext", "as_mlp"):
        model = scaleshift.apply(make_model(family), "ssf")
        perturb_trainable(model)
        model.eval()
        x = make_input(family)
        training_path = model(x).detach()
        with torch.no_grad():
            torch.testing.assert_close(model(x), training_path, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("init", ["normal", "constant", "uniform", "trunc_normal", "random"])
def test_inits(init):
    wrapper = ScaleShift(nn.Linear(4, 4096), 4096, "output")
    init_scale_shift(wrapper, init, 0.02)
    scale, shift = wrapper.ssf_scale.detach(), wrapper.ssf_shift.detach()
    expected_mean = 0.0 if init == "random" else 1.0
    assert abs(scale.mean().item() - expected_mean) < 0.005
    assert abs(shift.mean().item()) < 0.005
    if init == "constant":
        assert torch.all(scale == 1) and torch.all(shift == 0)
    else:
        assert 0.01 < scale.std().item() < 0.03
    if init in ("trunc_normal", "uniform"):
        assert (scale - 1).abs().max() <= 0.04 + 1e-6


def test_constant_init_is_the_identity():
    model = make_model("vit")
    x = make_input("vit")
    model.eval()
    with torch.no_grad():
        base = model(x)
        scaleshift.apply(model, "ssf", init="constant")
        torch.testing.assert_close(model.eval()(x), base)


@pytest.mark.parametrize("options, message", [
    (dict(rank=4), "unknown option"),
    (dict(init="gaussian"), "must be one of"),
    (dict(layers="two"), "takes k .* or last:k"),
    (dict(layers=-1), "takes k .* or last:k"),
    (dict(exclude="mlp,heads"), "not allowed"),
    (dict(scale="maybe"), "must be a bool"),
    (dict(scale=False, shift=False), "nothing to train"),
])
def test_bad_options_fail_clearly(options, message):
    with pytest.raises(scaleshift.ScaleshiftError, match=message):
        scaleshift.apply(make_model("vit"), "ssf", **options)


def test_paper_profile_refuses_unknown_family():
    model = scaleshift.create_model("resnet18", num_classes=3)
    with pytest.raises(scaleshift.ScaleshiftError, match="profile=all"):
        scaleshift.apply(model, "ssf", profile="paper")


def test_apply_twice_is_refused():
    model = scaleshift.apply(make_model("vit"), "ssf")
    with pytest.raises(scaleshift.ScaleshiftError, match="already has"):
        scaleshift.apply(model, "ssf")


def test_convnext_official_final_ssf_is_reported_not_mergeable():
    report = scaleshift.merge_check("convnext_atto", "ssf", 5, convnext_final="residual",
                                    model_kwargs=dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
                                    input_size=(3, 32, 32))
    assert [d["module"] for d in report["non_mergeable"]] == ["norm_pre"]
    assert report["max_rel_diff"] <= 1e-5          # the kept affine still computes the same


# Families beyond the paper's, for the generic profile (README lists them).
GENERIC_FAMILIES = ["test_resnet", "test_efficientnet", "regnetx_002", "deit_tiny_patch16_224",
                    "pvt_v2_b0", "poolformer_s12", "convnextv2_atto", "mobilenetv3_small_050",
                    "eva02_tiny_patch14_224", "levit_128s", "coat_lite_tiny",
                    "xcit_nano_12_p16_224", "test_byobnet", "caformer_s18"]


@pytest.mark.slow
@pytest.mark.parametrize("model_name", GENERIC_FAMILIES)
def test_profile_all_merges_exactly_on_other_families(model_name):
    report = scaleshift.merge_check(model_name, "ssf", 10, profile="all", batch_size=1)
    assert report["non_mergeable"] == []
    assert report["plain_strict_load"] is True
    assert report["extra_params"] == 0
    assert report["max_rel_diff"] <= 1e-5


def test_profile_all_skips_layers_whose_weight_the_parent_reads():
    # BEiT's attention calls F.linear(x, qkv.weight, q/v bias): wrapping qkv would be wrong.
    model = scaleshift.create_model("beit_base_patch16_224", num_classes=3,
                                    img_size=32, depth=1, embed_dim=48, num_heads=2)
    scaleshift.apply(model, "ssf", profile="all")
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)
    assert isinstance(model.blocks[0].attn.proj, ScaleShift)


def test_explicit_reference_runs_the_layer_then_the_affine():
    """merge checks compare against layer(x) * scale + shift computed literally, not folded,
    and the switch is the model's own (no module-global flag)."""
    from scaleshift.methods import get_method
    linear = nn.Linear(4, 6).requires_grad_(False)
    wrapper = ScaleShift(linear, 6, "output")
    init_scale_shift(wrapper, "normal", 0.5)
    calls = []
    linear.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(3, 4)
    fused = wrapper(x)
    assert not calls                      # folded: the Linear module itself never runs
    other = ScaleShift(nn.Linear(4, 6).requires_grad_(False), 6, "output")
    with get_method("ssf").explicit_reference(wrapper):
        assert not other.explicit         # another model is not switched
        explicit = wrapper(x)
    assert calls == [1] and not wrapper.explicit
    torch.testing.assert_close(explicit, linear(x) * wrapper.ssf_scale + wrapper.ssf_shift)
    torch.testing.assert_close(fused, explicit)

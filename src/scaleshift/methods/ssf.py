"""SSF (Lian et al., NeurIPS 2022): y = scale * x + shift, per channel, on the output of an op.

After a Linear / Conv the affine is applied to the output along the op's channel dim (last dim
for Linear, dim 1 for Conv), so merging multiplies the weight rows by `scale` and maps the bias
to scale * b + shift. A convolution that standardises its weight at run time and multiplies it
by a per-channel gain (NFNet's ScaledStdConv2d) takes the scale into that gain instead. After a
norm layer the affine is applied through the norm's own affine parameters
(weight' = scale * weight, bias' = scale * bias + shift), which is the same function and works
for any norm class, including those that fuse an activation (timm's BatchNormAct2d).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..errors import ScaleshiftError
from ..models import classifier_parameter_names
from ..profiles import (GROUPS, Point, family_of, generic_points, is_affine_norm, is_foldable_layer,
                        is_gain_conv, paper_points)
from .base import Method, Option, plain_key, replace_module


def _compiling() -> bool:
    """True while torch.compile (dynamo) traces the model."""
    is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    return bool(is_compiling())


def _scale_safe_to_divide(scale: torch.Tensor | None) -> bool:
    """Whether the scale's gradient may be recovered from the saved output: every |scale| >
    1e-3. Reading the values is a host sync, which torch.compile would turn into a graph break
    at every SSF layer; while compiling the answer is therefore always False, and the
    data-independent path (the layer's output saved for the scale's gradient) is traced
    instead. Compiled and eager steps then agree within fp32 rounding (tests/test_compile.py)."""
    if scale is None:
        return True
    return not _compiling() and bool(scale.detach().abs().min() > 1e-3)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The lower precision autocast runs matmuls in on this device type, None outside autocast."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _channel_sums(grad, saved, channel_dim: int, mean, inv_scale, want_scale: bool, want_shift: bool):
    """Per channel: (sum(grad * (saved - mean)) * inv_scale, sum(grad)), in one pass.

    These are the scale and shift gradients of SSF. They are exactly what BatchNorm's backward
    computes for its weight and bias from the saved batch mean and inverse std, so ATen's
    native_batch_norm_backward reads grad and saved once each and returns both, reducing in
    fp32, with no product tensor the size of the output (a product then two sums took about
    2.5x as long on ViT-S's activations). Channels go last for a Linear's output (a (N, C)
    view) and stay at dim 1 for a Conv's."""
    if not want_scale:
        return None, (grad.sum([d for d in range(grad.ndim) if d != channel_dim], dtype=torch.float32)
                      if want_shift else None)
    channels = grad.shape[channel_dim]
    saved = saved.to(grad.dtype)   # under autocast a bf16 output can get an fp32 gradient
    if channel_dim != 1:
        grad, saved = grad.movedim(channel_dim, -1), saved.movedim(channel_dim, -1)
        grad, saved = grad.reshape(-1, channels), saved.reshape(-1, channels)
    dtype = torch.promote_types(grad.dtype, torch.float32)   # the statistics' dtype BatchNorm wants
    mean = torch.zeros(channels, dtype=dtype, device=grad.device) if mean is None \
        else mean.to(dtype).expand(channels).contiguous()
    inv_scale = inv_scale.to(dtype).expand(channels).contiguous()   # BatchNorm reads them densely
    _, grad_scale, grad_shift = torch.ops.aten.native_batch_norm_backward(
        grad, saved, None, None, None, mean, inv_scale, True, 0.0, [False, True, want_shift])
    return grad_scale, grad_shift


def _scale_grad(per_channel: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A per-channel sum as the gradient of `scale` (summed once more for a scalar scale)."""
    return (per_channel.sum().reshape(1) if scale.numel() == 1 else per_channel).to(scale.dtype)


class ScaleShiftOutputFn(torch.autograd.Function):
    """z = y * scale + shift that saves its OUTPUT z for backward (the scale's gradient is
    sum(g * (z - shift)) / scale) instead of its input y. The op after SSF usually saves z too
    (GELU, LayerNorm, attention's q/k/v), so SSF adds no activation memory of its own; saving y
    would add one full activation per insertion point. Falls back to saving y when a scale is
    too close to zero to divide by, and under torch.compile (see _scale_safe_to_divide)."""

    @staticmethod
    def forward(ctx, y, scale, shift, channel_dim):
        shape = [1] * y.ndim
        shape[channel_dim] = -1
        s = scale.view(shape) if scale is not None and scale.numel() > 1 else scale
        b = shift.view(shape) if shift is not None else None
        z = y * s if b is None else (y + b if s is None else torch.addcmul(b, y, s))
        recompute = s is None or _scale_safe_to_divide(scale)
        ctx.save_for_backward(z if recompute else y, scale, shift)
        ctx.recompute, ctx.channel_dim = recompute, channel_dim % y.ndim
        return z

    @staticmethod
    def backward(ctx, grad):
        saved, scale, shift = ctx.saved_tensors
        want_scale = scale is not None and ctx.needs_input_grad[1]
        want_shift = shift is not None and ctx.needs_input_grad[2]
        if ctx.recompute:
            mean, inv_scale = shift, (1 / scale if scale is not None else None)
        else:
            mean, inv_scale = None, torch.ones(1, device=grad.device)
        per_channel, grad_shift = _channel_sums(grad, saved, ctx.channel_dim, mean, inv_scale,
                                                want_scale, want_shift)
        grad_scale = _scale_grad(per_channel, scale) if want_scale else None
        grad_shift = grad_shift.to(shift.dtype) if want_shift else None
        if scale is not None and ctx.needs_input_grad[0]:
            shape = [1] * grad.ndim
            shape[ctx.channel_dim] = -1
            grad = grad * (scale.view(shape) if scale.numel() > 1 else scale)
        return grad, grad_scale, grad_shift, None


_CONV_INPUT_GRAD = {nn.Conv1d: torch.nn.grad.conv1d_input, nn.Conv2d: torch.nn.grad.conv2d_input,
                    nn.Conv3d: torch.nn.grad.conv3d_input}


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, layer: nn.Module, x_shape) -> torch.Tensor:
    """The gradient of a frozen Linear / Conv's input, given the (folded) weight it ran with."""
    if type(layer) is nn.Linear:
        return grad.matmul(weight)
    return _CONV_INPUT_GRAD[type(layer)](x_shape, weight, grad, layer.stride, layer.padding,
                                         layer.dilation, layer.groups)


def _scaled_weight_and_bias(layer: nn.Module, scale, shift, rows: bool = True):
    """(weight, bias) of `layer` with scale and shift folded in (paper Eq. 5). rows=True: a
    Linear (out, in) or Conv (out, in/groups, *k) weight, scaled per output row; rows=False: a
    norm's affine weight, scaled along its channel (last) dim."""
    weight, bias = layer.weight, layer.bias
    if scale is not None:
        factor = scale.view(-1, *([1] * (weight.ndim - 1))) if rows else scale
        weight = weight * factor.to(weight.dtype)
        bias = bias * scale.to(bias.dtype) if bias is not None else None
    if shift is not None:
        bias = shift.to(weight.dtype) if bias is None else bias + shift.to(bias.dtype)
    return weight, bias


class FrozenLayerScaleShiftFn(torch.autograd.Function):
    """Training path of SSF after a frozen Linear / Conv: z = layer(x) * scale + shift computed
    as ONE op with the folded weight (scale * W, scale * b + shift), so the forward makes no
    extra pass over the output and the backward's input gradient is a single matmul / conv with
    the folded weight, exactly as for BitFit. No weight gradient is ever formed. The scale's
    gradient sum(g * (z - shift)) / scale comes from the saved output z, which the next op saves
    anyway, so no activation is added. Used only when every |scale| > 1e-3, and not under
    torch.compile (_scale_safe_to_divide)."""

    @staticmethod
    def forward(ctx, x, scale, shift, layer):
        weight, bias = _scaled_weight_and_bias(layer, scale, shift)
        low = _autocast_dtype(x.device.type)
        cast = low is not None and weight.dtype == torch.float32   # what autocast casts
        if cast:
            # Under autocast the matmul runs on a cast copy of the weight anyway, and autograd
            # keeps that copy for BitFit's backward too: fold in full precision, round once,
            # and keep the result, so the backward neither folds nor casts again.
            weight = weight.to(low)
        if type(layer) is nn.Linear:
            z = F.linear(x, weight, bias)
        else:
            z = layer._conv_forward(x, weight, bias)
        kept = weight if cast and ctx.needs_input_grad[0] else None
        ctx.save_for_backward(z, scale, shift, kept)
        ctx.layer, ctx.x_shape, ctx.x_dtype = layer, x.shape, x.dtype
        return z

    @staticmethod
    def backward(ctx, grad):
        z, scale, shift, kept = ctx.saved_tensors
        layer = ctx.layer
        linear = type(layer) is nn.Linear
        grad_x = grad_scale = grad_shift = None
        if ctx.needs_input_grad[0]:
            if kept is not None:   # the folded weight the forward ran with (autocast)
                grad_x = _input_grad(grad, kept.to(grad.dtype), layer, ctx.x_shape)
            elif linear and scale is not None and grad.numel() < layer.weight.numel():
                # scale * grad (output-sized) is less work than scale * W (weight-sized) here
                grad_x = _input_grad(grad * scale.to(grad.dtype), layer.weight.to(grad.dtype), layer,
                                     ctx.x_shape)
            else:
                weight = layer.weight.to(grad.dtype)
                if scale is not None:
                    weight = weight * scale.to(grad.dtype).view(-1, *([1] * (weight.ndim - 1)))
                grad_x = _input_grad(grad, weight, layer, ctx.x_shape)
            grad_x = grad_x.to(ctx.x_dtype)
        want_scale = scale is not None and ctx.needs_input_grad[1]
        want_shift = shift is not None and ctx.needs_input_grad[2]
        if want_scale or want_shift:
            per_channel, sum_grad = _channel_sums(grad, z, grad.ndim - 1 if linear else 1, shift,
                                                  1 / scale if scale is not None else None,
                                                  want_scale, want_shift)
            grad_scale = _scale_grad(per_channel, scale) if want_scale else None
            grad_shift = sum_grad.to(shift.dtype) if want_shift else None
        return grad_x, grad_scale, grad_shift, None


class ScaleShift(nn.Module):
    """Wraps `base_layer` and scales/shifts its output channels.

    mode "output": y = base_layer(x) * scale + shift along `channel_dim`.
    mode "affine": base_layer runs with weight * scale and bias * scale + shift (norm layers).
    """

    def __init__(self, base_layer: nn.Module, channels: int, mode: str, channel_dim: int = -1,
                 scale: bool = True, shift: bool = True, scalar_scale: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.mode = mode
        self.channel_dim = channel_dim
        self.ssf_scale = nn.Parameter(torch.ones(1 if scalar_scale else channels)) if scale else None
        self.ssf_shift = nn.Parameter(torch.zeros(channels)) if shift else None
        self.explicit = False   # True: layer(x) * scale + shift literally (SSF.explicit_reference)
        # fixed by the layer's type and the vectors, so decided once: a flag set lazily in
        # forward would make torch.compile recompile the whole model after its first step
        self._is_foldable = self.unfoldable_reason() is None and not is_gain_conv(base_layer)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, channel_dim={self.channel_dim}"

    # Some models read a layer's weight for its device or dtype (timm's XCiT); layers whose
    # weight a parent uses in its own computation are never wrapped (see profiles.called_modules).
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def folded_params(self) -> dict[str, torch.Tensor | None]:
        """base_layer's weight and bias with scale and shift folded in (paper Eq. 5)."""
        return dict(zip(("weight", "bias"), _scaled_weight_and_bias(
            self.base_layer, self.ssf_scale, self.ssf_shift, rows=self.mode == "output")))

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        base, params = self.base_layer, self.folded_params()
        if type(base) is nn.Linear:
            return F.linear(x, params["weight"], params["bias"])
        if type(base) in _CONV_INPUT_GRAD:
            return base._conv_forward(x, params["weight"], params["bias"])
        if type(base) is nn.LayerNorm:
            return F.layer_norm(x, base.normalized_shape, params["weight"], params["bias"], base.eps)
        return functional_call(base, params, (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Norms always run through their own affine. A foldable Linear/Conv runs with folded
        # weights at inference (weight-sized work instead of a pass over the output) and, while
        # its own weights are frozen, in training too (FrozenLayerScaleShiftFn).
        if self.mode == "affine":
            return self._forward_folded(x)
        if self._foldable() and not self._base_trainable() and not self.explicit:
            if not torch.is_grad_enabled():
                return self._forward_folded(x)
            if self._fused_backward_ok():
                return FrozenLayerScaleShiftFn.apply(x, self.ssf_scale, self.ssf_shift, self.base_layer)
        y = self.base_layer(x)
        return ScaleShiftOutputFn.apply(y, self.ssf_scale, self.ssf_shift, self.channel_dim)

    def _foldable(self) -> bool:
        return self._is_foldable

    def _base_trainable(self) -> bool:
        return any(p.requires_grad for p in self.base_layer.parameters(recurse=False))

    def _fused_backward_ok(self) -> bool:
        base = self.base_layer
        if type(base) is not nn.Linear and (type(base) not in _CONV_INPUT_GRAD
                                            or base.padding_mode != "zeros"
                                            or isinstance(base.padding, str)):
            return False
        return _scale_safe_to_divide(self.ssf_scale)

    def unfoldable_reason(self) -> str | None:
        base = self.base_layer
        if self.mode == "output" and not (is_foldable_layer(base) or is_gain_conv(base)):
            return (f"SSF on the output of a {type(base).__name__} (e.g. the residual stream) "
                    f"does not fold into any layer's weights")
        if self.ssf_shift is not None and getattr(base, "bias", None) is None:
            return (f"a shift after the bias-free {type(base).__name__} would need a bias the "
                    f"plain architecture does not have")
        return None


def init_scale_shift(module: ScaleShift, init: str, std: float) -> None:
    """Paper Table 6c inits. 'normal' is the paper's default: scale ~ N(1, std), shift ~ N(0, std).
    'uniform' has the same variance as 'normal' (half-width std * sqrt(3)); 'trunc_normal' is
    'normal' cut at 2 std; 'random' is mean-0 for both; 'constant' is the identity."""
    with torch.no_grad():
        for tensor, mean in ((module.ssf_scale, 1.0), (module.ssf_shift, 0.0)):
            if tensor is None:
                continue
            if init == "normal":
                tensor.normal_(mean, std)
            elif init == "constant":
                tensor.fill_(mean)
            elif init == "uniform":
                half = std * math.sqrt(3)
                tensor.uniform_(mean - half, mean + half)
            elif init == "trunc_normal":
                nn.init.trunc_normal_(tensor, mean, std, mean - 2 * std, mean + 2 * std)
            elif init == "random":
                tensor.normal_(0.0, std)


def _channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if is_foldable_layer(module):
        return module.out_channels
    return module.weight.shape[0]


LAST = "last:"


class LayersOption(Option):
    """k: the first k blocks (paper Table 6a); "last:k": the last k blocks."""

    def parse(self, method: str, key: str, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower().startswith(LAST):
            count = value.strip()[len(LAST):]
            if not count.isdigit() or int(count) < 1:
                raise ScaleshiftError(f"option {key!r} of method {method!r}: {value!r} trains no "
                                      f"block; use last:k with k >= 1 (the last k blocks), or "
                                      f"layers=0 for the paper's SSF-free row")
            return f"{LAST}{int(count)}"
        try:
            return super().parse(method, key, value)
        except ScaleshiftError:
            raise ScaleshiftError(f"option {key!r} of method {method!r} takes k (SSF in the first "
                                  f"k blocks, paper Table 6a) or last:k (the last k blocks), got "
                                  f"{value!r}") from None


def last_blocks(layers: Any) -> int | None:
    """k of layers=last:k, None for any other value."""
    return int(layers[len(LAST):]) if isinstance(layers, str) and layers.startswith(LAST) else None


class SSF(Method):
    name = "ssf"
    description = "Scale & shift features after every op of the profile (Lian et al. 2022)"
    supports_transformers = True
    options = {
        "profile": Option("auto", "paper: the official insertion points (ViT, Swin, ConvNeXt, "
                          "MLP-Mixer, AS-MLP); all: after every Linear, Conv and norm affine of any "
                          "model; auto: paper where the family is known, else all",
                          choices=("auto", "paper", "all")),
        "init": Option("normal", "scale/shift init (paper Table 6c)",
                       choices=("normal", "constant", "uniform", "trunc_normal", "random")),
        "init_std": Option(0.02, "std of the scale/shift init", minimum=0.0, maximum=1.0),
        "layers": LayersOption(None, "k: SSF in the first k blocks only, plus embed and final "
                               "norm when k > 0 (paper Table 6a); last:k: in the last k blocks "
                               "plus the final norm, nothing before them (the frozen prefix "
                               "can then be cached: RunConfig cache_prefix); default: every "
                               "block", minimum=0),
        "exclude": Option([], "location groups without SSF (paper Table 6b)", choices=GROUPS,
                          is_list=True),
        "scale": Option(True, "learn the scale (paper Table 6d)"),
        "shift": Option(True, "learn the shift (paper Table 6d)"),
        "scalar_scale": Option(False, "one scalar scale per insertion instead of a vector"),
        "only_norm": Option(False, "SSF only after the norm layers inside blocks"),
        "convnext_final": Option("head_norm", "ConvNeXt's final SSF: 'residual' is the official "
                                 "place (on the residual stream before the head; cannot merge), "
                                 "'head_norm' folds it into head.norm with the same count",
                                 choices=("head_norm", "residual")),
    }

    def select_points(self, model: nn.Module, opts: dict) -> tuple[list[Point], list[str], str]:
        """Insertion points, extra trainable module paths, resolved profile name."""
        family = family_of(model)
        profile = opts["profile"]
        if profile == "paper" and family is None:
            raise ScaleshiftError(f"the 'paper' profile knows ViT, Swin, ConvNeXt, MLP-Mixer and "
                                  f"AS-MLP; {type(model).__name__} is none of them: use profile=all")
        if profile == "auto":
            profile = "paper" if family is not None else "all"
        head = {n.rpartition(".")[0] for n in classifier_parameter_names(model)}
        extra: list[str] = []
        if profile == "paper":
            points = paper_points(model, family)
            if family.head_norm:   # ConvNeXt
                if opts["convnext_final"] == "head_norm":
                    points.append(Point(family.head_norm, "final", None))
                elif family.pre_pool:
                    points.append(Point(family.pre_pool, "final", None))
                else:
                    raise ScaleshiftError(f"convnext_final=residual needs a module on the residual "
                                          f"stream before pooling, which {type(model).__name__} "
                                          f"lacks (timm's ConvNeXt has norm_pre); use "
                                          f"convnext_final=head_norm")
                extra.append(family.head_norm)   # official SSF trains head.norm too (paper counts)
        else:
            for key in ("layers",):
                if opts[key] is not None:
                    raise ScaleshiftError(f"option {key} needs the 'paper' profile (block structure "
                                          f"of ViT, Swin, ConvNeXt, MLP-Mixer, AS-MLP)")
            structural = set(opts["exclude"]) - {"norm"}
            if structural:
                raise ScaleshiftError(f"exclude={sorted(structural)} needs the 'paper' profile; "
                                      f"profile=all only knows the group 'norm'")
            points = generic_points(model, skip=head)
        last = last_blocks(opts["layers"])
        if last is not None:
            depth = 1 + max(p.block for p in points if p.block is not None)
            if last > depth:
                raise ScaleshiftError(f"layers=last:{last}, but {type(model).__name__} has "
                                      f"{depth} blocks; use last:1 to last:{depth}")
            points = [p for p in points if p.group == "final"
                      or (p.block is not None and p.block >= depth - last)]
        elif opts["layers"] is not None:
            k = opts["layers"]
            depth = 1 + max((p.block for p in points if p.block is not None), default=-1)
            if k > depth:
                raise ScaleshiftError(f"layers={k}, but {type(model).__name__} has {depth} blocks; "
                                      f"use 0 to {depth} (or last:1 to last:{depth})")
            points = [] if k == 0 else [p for p in points if p.block is None or p.block < k]
        if opts["exclude"]:
            points = [p for p in points if p.group not in opts["exclude"]]
        if opts["only_norm"]:
            points = [p for p in points if p.group == "norm"]   # paper: the norms inside blocks
        return points, extra, profile

    def inject(self, model: nn.Module, opts: dict) -> list[str]:
        if not opts["scale"] and not opts["shift"]:
            raise ScaleshiftError("ssf with scale=false and shift=false has nothing to train; "
                                  "enable at least one")
        points, extra, profile = self.select_points(model, opts)
        opts["profile"] = profile
        trainable = []
        for point in points:
            module = model.get_submodule(point.name)
            use_shift = opts["shift"]
            is_layer = is_foldable_layer(module) or is_gain_conv(module)
            if is_layer:
                mode, dim = "output", (-1 if isinstance(module, nn.Linear) else 1)
                if profile == "all" and module.bias is None:
                    use_shift = False   # a shift here could not fold without adding a bias
            elif is_affine_norm(module):
                mode, dim = "affine", 1
                if profile == "all" and module.bias is None:
                    use_shift = False
            else:   # ConvNeXt's official final SSF on the (NCHW) residual stream
                mode, dim = "output", 1
            channels = _channels(module) if mode == "affine" or is_layer else model.num_features
            if not opts["scale"] and not use_shift:
                continue
            wrapper = ScaleShift(module, channels, mode, dim, scale=opts["scale"], shift=use_shift,
                                 scalar_scale=opts["scalar_scale"])
            init_scale_shift(wrapper, opts["init"], opts["init_std"])
            replace_module(model, point.name, wrapper)
            trainable += [f"{point.name}.{n}" for n, _ in wrapper.named_parameters(recurse=False)]
        for prefix in extra:
            trainable += [n for n, _ in model.named_parameters() if n.startswith(prefix + ".")]
        return trainable

    def merge_state(self, base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
                    options: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
        """Fold every scale/shift pair into the weight and bias of the layer it follows (paper
        Eq. 5): W' = scale * W (per output row, or per channel of a norm's affine; for a gain
        conv, gain' = scale * gain) and b' = scale * b + shift. Points whose layer has no weight
        in the plain state dict (the residual stream) or a shift after a bias-free layer cannot
        fold and are reported."""
        vectors: dict[str, dict[str, torch.Tensor]] = {}
        plain_trained = {}
        for key, value in trained.items():
            prefix, _, leaf = key.rpartition(".")
            if leaf in ("ssf_scale", "ssf_shift"):
                vectors.setdefault(plain_key(prefix + "."), {})[leaf] = value
            else:
                plain_trained[key] = value
        merged, _ = super().merge_state(base, plain_trained, options)
        non_mergeable = []
        for prefix, pair in vectors.items():
            point = prefix.rstrip(".")
            weight, bias = merged.get(prefix + "weight"), merged.get(prefix + "bias")
            scale, shift = pair.get("ssf_scale"), pair.get("ssf_shift")
            if weight is None:
                non_mergeable.append(dict(module=point, reason="SSF on the output of a layer with "
                                          "no weight (e.g. the residual stream) does not fold "
                                          "into any layer's weights"))
                continue
            if shift is not None and bias is None:
                non_mergeable.append(dict(module=point, reason="a shift after a bias-free layer "
                                          "would need a bias the plain architecture does not have"))
                continue
            gain = merged.get(prefix + "gain")   # a gain conv: the scale goes into its gain
            if scale is not None and gain is not None:
                merged[prefix + "gain"] = gain * scale.view(-1, 1, 1, 1).to(gain.dtype)
            elif scale is not None:
                weight = weight * scale.view(-1, *([1] * (weight.ndim - 1))).to(weight.dtype)
            if scale is not None:
                bias = bias * scale.to(bias.dtype) if bias is not None else None
            if shift is not None:
                bias = bias + shift.to(bias.dtype)
            merged[prefix + "weight"] = weight
            if bias is not None:
                merged[prefix + "bias"] = bias
        return merged, non_mergeable

    @contextlib.contextmanager
    def explicit_reference(self, model: nn.Module):
        """Every SSF Linear/Conv of `model` computes the paper's formula literally, the layer's
        own output followed by y * scale + shift, instead of folding scale and shift into its
        weight: the reference that merge checks compare folded and merged models against."""
        wrappers = [m for m in model.modules() if isinstance(m, ScaleShift)]
        previous = [m.explicit for m in wrappers]
        for m in wrappers:
            m.explicit = True
        try:
            yield model
        finally:
            for m, was in zip(wrappers, previous):
                m.explicit = was


SSF_METHOD = SSF()

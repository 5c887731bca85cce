"""SSF (Lian et al., NeurIPS 2022): y = scale * x + shift, per channel, on the output of an op.

After a Linear / Conv the affine is applied to the output along the op's channel dim (last dim
for Linear, dim 1 for Conv), so merging multiplies the weight rows by `scale` and maps the bias
to scale * b + shift. After a norm layer the affine is applied through the norm's own affine
parameters (weight' = scale * weight, bias' = scale * bias + shift), which is the same function
and works for any norm class, including those that fuse an activation (timm's BatchNormAct2d).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.func import functional_call

from ..errors import ScaleshiftError
from ..models import classifier_parameter_names
from ..profiles import GROUPS, Point, family_of, generic_points, is_affine_norm, is_foldable_layer, paper_points
from . import Method, Option, register, replace_module


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

    def _view(self, vector: torch.Tensor, ndim: int) -> torch.Tensor:
        if self.channel_dim in (-1, ndim - 1):
            return vector
        shape = [1] * ndim
        shape[self.channel_dim] = -1
        return vector.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ssf_scale, self.ssf_shift
        if self.mode == "affine":
            weight, bias = self.base_layer.weight, self.base_layer.bias
            params = {"weight": weight * scale if scale is not None else weight}
            if bias is not None or shift is not None:
                new_bias = bias if bias is not None else torch.zeros_like(shift)
                if scale is not None:
                    new_bias = new_bias * scale
                params["bias"] = new_bias + shift if shift is not None else new_bias
            return functional_call(self.base_layer, params, (x,))
        y = self.base_layer(x)
        if scale is not None and shift is not None:
            return torch.addcmul(self._view(shift, y.ndim), y, self._view(scale, y.ndim))
        if scale is not None:
            return y * self._view(scale, y.ndim)
        return y + self._view(shift, y.ndim)

    def unfoldable_reason(self) -> str | None:
        base = self.base_layer
        if self.mode == "output" and not is_foldable_layer(base):
            return (f"SSF on the output of a {type(base).__name__} (e.g. the residual stream) "
                    f"does not fold into any layer's weights")
        if self.ssf_shift is not None and getattr(base, "bias", None) is None:
            return (f"a shift after the bias-free {type(base).__name__} would need a bias the "
                    f"plain architecture does not have")
        return None

    @torch.no_grad()
    def fold(self) -> nn.Module:
        """Return base_layer with scale/shift folded into its parameters (call only when
        unfoldable_reason() is None)."""
        base = self.base_layer
        scale, shift = self.ssf_scale, self.ssf_shift
        if scale is not None:
            weight = base.weight
            factor = scale.to(weight.dtype)
            if self.mode == "output":   # Linear (out, in) / Conv (out, in/groups, *k): rows
                factor = factor.view(-1, *([1] * (weight.ndim - 1)))
            weight.mul_(factor)
            if base.bias is not None:
                base.bias.mul_(scale.to(base.bias.dtype))
        if shift is not None:
            base.bias.add_(shift.to(base.bias.dtype))
        return base


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


class SSF(Method):
    name = "ssf"
    description = "Scale & shift features after every op of the profile (Lian et al. 2022)"
    options = {
        "profile": Option("auto", "paper: the official insertion points (ViT, Swin, ConvNeXt, "
                          "MLP-Mixer, AS-MLP); all: after every Linear, Conv and norm affine of any "
                          "model; auto: paper where the family is known, else all",
                          choices=("auto", "paper", "all")),
        "init": Option("normal", "scale/shift init (paper Table 6c)",
                       choices=("normal", "constant", "uniform", "trunc_normal", "random")),
        "init_std": Option(0.02, "std of the scale/shift init", minimum=0.0),
        "layers": Option(None, "SSF in the first k blocks only, plus embed and final norm when "
                         "k > 0 (paper Table 6a); default: every block", minimum=0),
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
            if family.name == "convnext":
                if opts["convnext_final"] == "residual":
                    points.append(Point("norm_pre", "final", None))
                else:
                    points.append(Point("head.norm", "final", None))
                extra.append("head.norm")   # official SSF trains head.norm too (paper counts)
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
        if opts["layers"] is not None:
            k = opts["layers"]
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
            if is_foldable_layer(module):
                mode, dim = "output", (-1 if isinstance(module, nn.Linear) else 1)
                if profile == "all" and module.bias is None:
                    use_shift = False   # a shift here could not fold without adding a bias
            elif is_affine_norm(module):
                mode, dim = "affine", 1
                if profile == "all" and module.bias is None:
                    use_shift = False
            else:   # ConvNeXt's official final SSF on the (NCHW) residual stream
                mode, dim = "output", 1
            channels = _channels(module) if mode == "affine" or is_foldable_layer(module) \
                else model.num_features
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

    def merge(self, model: nn.Module) -> list[dict]:
        non_mergeable = []
        for name, module in list(model.named_modules()):
            if not isinstance(module, ScaleShift):
                continue
            reason = module.unfoldable_reason()
            if reason:
                non_mergeable.append(dict(module=name, reason=reason))
            else:
                replace_module(model, name, module.fold())
        return non_mergeable


register(SSF())

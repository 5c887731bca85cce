"""Re-parameterisation: fold a method back into the plain architecture, and prove it did."""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from .errors import ScaleshiftError
from .methods import CONFIG_ATTR, apply, config_of, get_method, total_parameters
from .methods.ssf import explicit_output_affine
from .models import create_model, plain_timm_model


def merge_with_report(model: nn.Module) -> tuple[nn.Module, list[dict]]:
    """A new model with the method folded in, and what could not be folded (kept as is)."""
    config = config_of(model)
    if config is None:
        raise ScaleshiftError("this model has no scaleshift method applied; nothing to merge")
    merged = copy.deepcopy(model)
    non_mergeable = get_method(config["method"]).merge(merged)
    if not non_mergeable:
        delattr(merged, CONFIG_ATTR)
    for param in merged.parameters():
        param.requires_grad_(True)
    return merged, non_mergeable


def merge(model: nn.Module) -> nn.Module:
    """A NEW model of the original class with the method folded into its weights; `model` is
    untouched. What cannot fold (adapters, prompts) stays, with a warning naming it."""
    merged, non_mergeable = merge_with_report(model)
    if non_mergeable:
        warnings.warn("not folded: " + "; ".join(f"{d['module']}: {d['reason']}"
                                                 for d in non_mergeable), stacklevel=2)
    return merged


@torch.no_grad()
def perturb_trainable(model: nn.Module, std: float = 0.1, seed: int = 0) -> None:
    """Move every trainable parameter away from its init (identity scale/shift, zero LoRA B,
    zero adapter up-projection) so that a merge test cannot pass by accident."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.requires_grad:
            param.add_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * std)


@torch.no_grad()
def merge_check(model_name: str, method: str = "ssf", num_classes: int = 100, *,
                model_kwargs: dict | None = None, input_size: tuple | None = None,
                batch_size: int = 2, seed: int = 0, **options) -> dict:
    """Random backbone, random non-identity method parameters: does the merged model equal the
    unmerged one, is it the plain timm architecture, and what could not be folded?"""
    model_kwargs = model_kwargs or {}
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    apply(model, method, **options)
    perturb_trainable(model, seed=seed)
    model.eval()
    size = input_size or model.pretrained_cfg.get("input_size", (3, 224, 224))
    x = torch.randn(batch_size, *size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad(), explicit_output_affine():   # layer(x) * scale + shift, unfolded
        reference = model(x).detach()
    merged, non_mergeable = merge_with_report(model)
    merged.eval()
    plain = plain_timm_model(model_name, num_classes, **model_kwargs).eval()
    try:
        plain.load_state_dict(merged.state_dict(), strict=True)
        strict_load = True
        output = plain(x)
    except RuntimeError:
        strict_load = False
        output = merged(x)
    diff = (output - reference).abs().max().item()
    return dict(
        model=model_name, method=method, options=config_of(model)["options"],
        max_abs_diff=diff, max_rel_diff=diff / max(reference.abs().max().item(), 1e-12),
        plain_strict_load=strict_load,
        extra_params=total_parameters(merged) - total_parameters(plain),
        non_mergeable=non_mergeable)


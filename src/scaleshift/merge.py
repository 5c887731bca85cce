"""Re-parameterisation: fold a method back into the plain architecture, and prove it did.

The merge itself is a pure function of tensors (torchtune's shape):

    merged_state, not_folded = merge_state("ssf", base_state, adapter_tensors, options)

where `base_state` is the plain model's state dict and `adapter_tensors` what an adapter file
holds. `merge(model)` (a new plain timm or transformers model; the input untouched), `merge_check`, the
`merge` / `export` commands, multi-task serving and finished runs all go through it.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn

from .adapter_files import adapter_state
from .errors import ScaleshiftError, check_model_argument
from .methods import apply, config_of, get_method, plain_key, replace_module, total_parameters
from .models import attach_identity, create_model, identity_of, num_classes_of, plain_model
from .profiles import input_size_of


def merge_state(method: str, base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
                options: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """(plain state dict with the method folded in, what could not fold). `base` and `trained`
    are read, never written. A tensor a model shares between modules (CoaT's convolutional
    position encodings) appears under several keys: a merge of one of them reaches them all."""
    merged, non_mergeable = get_method(method).merge_state(base, trained, options)
    shared: dict[tuple, list[str]] = {}
    for key, value in base.items():
        if value.numel():
            shared.setdefault((value.data_ptr(), value.shape, value.stride()), []).append(key)
    for keys in (k for k in shared.values() if len(k) > 1):
        changed = [k for k in keys if merged[k] is not base[k]]
        for key in keys:
            if changed:
                merged[key] = merged[changed[0]]
    return merged, non_mergeable


def split_state(model: nn.Module, plain_keys: set[str]) -> tuple[dict, dict]:
    """A method-applied model's state as (the plain model's state dict under it, the method's
    trained tensors), without copying a tensor."""
    base = {}
    for key, value in model.state_dict(keep_vars=False).items():
        if plain_key(key) in plain_keys:
            base[plain_key(key)] = value
    return base, adapter_state(model)


def merge_with_report(model: nn.Module) -> tuple[nn.Module, list[dict]]:
    """A new model with the method folded in, and what could not be folded (kept as is). Peak
    memory grows by about one model: the plain architecture is built on the meta device and
    takes the merged tensors themselves (load_state_dict(assign=True)); only the tensors that
    would otherwise be shared with `model` are copied."""
    config = config_of(model)
    if config is None:
        raise ScaleshiftError("this model has no scaleshift method applied; nothing to merge")
    identity = identity_of(model)
    if identity is None:
        raise ScaleshiftError(f"cannot merge a {type(model).__name__}: it was not built by timm "
                              f"or transformers, so there is no plain architecture to merge into")
    with torch.device("meta"):
        plain = plain_model(identity, num_classes_of(model))
    if hasattr(model, "pretrained_cfg"):   # timm's data config (transformers models have none)
        plain.pretrained_cfg = model.pretrained_cfg
    attach_identity(plain, identity)
    base, trained = split_state(model, set(plain.state_dict()))
    with torch.no_grad():
        state, non_mergeable = merge_state(config["method"], base, trained, config["options"])
        if non_mergeable:
            plain = _keep_unfolded(plain, model, state, config, {d["module"] for d in non_mergeable})
        else:
            assign_state(plain, state, buffers_from=model)
    return plain.train(model.training), non_mergeable


def assign_state(module: nn.Module, state: dict[str, torch.Tensor],
                 buffers_from: nn.Module | None = None) -> nn.Module:
    """Make `state` the tensors of `module` (built on the meta device), strictly: every key and
    shape must match. A tensor that shares memory with `buffers_from` is copied first, so that
    the two models never write into each other. Buffers no state dict holds (non-persistent:
    e.g. relative position indices) are copied from `buffers_from` under the same plain name;
    without it they stay on the meta device (enough for a strict-load check)."""
    shared = set()
    if buffers_from is not None:
        shared = {t.untyped_storage().data_ptr() for t in buffers_from.state_dict().values()
                  if t.device.type != "meta"}
    copies: dict[int, torch.Tensor] = {}   # one copy per tensor, so tied keys stay tied
    owned = {}
    for key, value in state.items():
        if value.untyped_storage().data_ptr() in shared:
            value = copies.setdefault(id(value), value.clone())
        owned[key] = value
    module.load_state_dict(owned, strict=True, assign=True)
    if buffers_from is not None:
        source = {plain_key(n): b for n, b in buffers_from.named_buffers()}
        for name, buffer in list(module.named_buffers()):
            if buffer.is_meta and plain_key(name) in source:
                owner_name, _, leaf = name.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
                owner._buffers[leaf] = source[plain_key(name)].clone()
    return module


def _keep_unfolded(plain: nn.Module, model: nn.Module, state: dict, config: dict,
                   keep: set[str]) -> nn.Module:
    """The method applied to `plain` again, with the wrappers of every point that folded taken
    out and the rest (adapters, prompts, SSF on the residual stream) kept with their tensors."""
    apply(plain, config["method"], **config["options"])
    for name, module in [(n, m) for n, m in plain.named_modules() if hasattr(m, "base_layer")]:
        if name not in keep:
            replace_module(plain, name, module.base_layer)
    source = model.state_dict()
    assign_state(plain, {k: state[plain_key(k)] if plain_key(k) in state else source[k]
                         for k in plain.state_dict()}, buffers_from=model)
    for param in plain.parameters():
        param.requires_grad_(True)
    return plain


def merge(model: nn.Module) -> nn.Module:
    """A NEW model of the original class with the method folded into its weights; `model` is
    untouched. What cannot fold (adapters, prompts) stays, with a warning naming it."""
    check_model_argument(model, "merge", needs_values=True)
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
    model = create_model(model_name, num_classes=num_classes, seed=seed, **(model_kwargs or {}))
    apply(model, method, **options)
    perturb_trainable(model, seed=seed)
    model.eval()
    size = input_size or input_size_of(model)
    x = torch.randn(batch_size, *size, generator=torch.Generator().manual_seed(seed + 1))
    with get_method(method).explicit_reference(model):   # e.g. layer(x) * scale + shift, unfolded
        reference = model(x).detach()
    merged, non_mergeable = merge_with_report(model)
    merged.eval()
    plain = plain_model(identity_of(model), num_classes).eval()
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

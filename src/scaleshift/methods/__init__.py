"""The method registry, `apply` and parameter counts.

Every method is an instance of `base.Method` in its own file; `METHODS` below lists them in the
order `methods()` returns them (SSF first).
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import ScaleshiftError, check_model_argument
from ..models import IDENTITY_ATTR, classifier_parameter_names, identity_of, is_transformers_model
from ..profiles import transformers_family
from . import adapter, bias, full, linear, lora, ssf, vpt
from .base import CONFIG_ATTR, Method, Option, config_of, plain_key, replace_module

METHODS: tuple[Method, ...] = (ssf.SSF_METHOD, linear.LINEAR, full.FULL, bias.BIAS,
                               adapter.ADAPTER, vpt.VPT_SHALLOW, vpt.VPT_DEEP, lora.LORA)
_REGISTRY: dict[str, Method] = {method.name: method for method in METHODS}


def methods() -> list[str]:
    """Names of every method, SSF first."""
    return list(_REGISTRY)


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise ScaleshiftError(f"unknown method {name!r}; choose one of {list(_REGISTRY)}")
    return _REGISTRY[name]


def apply(model: nn.Module, method: str = "ssf", **options) -> nn.Module:
    """Insert `method` into `model` (in place) and freeze all but its parameters and the head."""
    check_model_argument(model, "apply")
    if config_of(model) is not None:
        raise ScaleshiftError(f"this model already has method {config_of(model)['method']!r} "
                              f"applied; create a fresh model to apply another one")
    impl = get_method(method)
    opts = impl.resolve_options(options)
    if is_transformers_model(model):
        transformers_family(model)   # refuses a class whose head and merge are not verified
        if not impl.supports_transformers:
            usable = [m.name for m in _REGISTRY.values() if m.supports_transformers]
            raise ScaleshiftError(f"method {impl.name!r} works on timm models only; on the "
                                  f"transformers {type(model).__name__} use one of {usable}")
    identity = identity_of(model)   # recorded on the plain model, before any wrapper goes in
    if identity is not None:
        setattr(model, IDENTITY_ATTR, identity)
    trainable = set(impl.inject(model, opts)) | classifier_parameter_names(model)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    setattr(model, CONFIG_ATTR, dict(method=impl.name, options=opts))
    if is_transformers_model(model):   # Trainer.save_model / save_pretrained: the merged model
        # transformers_save merges through adapter_files and merge, which import this module
        from ..transformers_save import save_merged_on_save_pretrained
        save_merged_on_save_pretrained(model)
    return model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def total_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def print_trainable_parameters(model: nn.Module) -> None:
    check_model_argument(model, "print_trainable_parameters")
    trainable, total = trainable_parameters(model), total_parameters(model)
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
          f"trainable%: {100 * trainable / max(total, 1):.4f}")



__all__ = ["CONFIG_ATTR", "METHODS", "Method", "Option", "apply", "config_of", "get_method",
           "methods", "plain_key", "print_trainable_parameters", "replace_module",
           "total_parameters", "trainable_parameters"]

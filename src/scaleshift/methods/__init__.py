"""The method registry and what every method shares: options, apply, freezing.

A method is an instance of `Method` in its own file. It declares its options, injects its
modules into a model in place (`inject`, returning the names of the parameters it trains
besides the classifier head) and folds them back (`merge`, in place on a copy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch.nn as nn

from ..errors import ScaleshiftError
from ..models import classifier_parameter_names, model_name_of

CONFIG_ATTR = "scaleshift_config"


@dataclass(frozen=True)
class Option:
    default: Any
    help: str
    choices: tuple = ()      # allowed values (for a list option: allowed items)
    is_list: bool = False    # a list of choices, given as "a,b" on the command line
    minimum: float | None = None

    def parse(self, method: str, key: str, value: Any) -> Any:
        """Coerce `value` (native or a command-line string) to this option's type or fail."""
        where = f"option {key!r} of method {method!r}"
        if self.is_list:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)):
                raise ScaleshiftError(f"{where} takes a list such as 'mlp,attn', got {value!r}")
            items = [str(i).strip() for i in items if str(i).strip()]
            bad = [i for i in items if self.choices and i not in self.choices]
            if bad:
                raise ScaleshiftError(f"{where}: {bad} not allowed; choose from {list(self.choices)}")
            return sorted(set(items))
        kind = type(self.default)
        if self.default is None:
            kind = int if self.minimum is not None else str
        try:
            if kind is bool:
                if isinstance(value, str):
                    lowered = value.strip().lower()
                    if lowered not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(value)
                    value = lowered in ("true", "1", "yes")
                elif not isinstance(value, bool):
                    raise ValueError(value)
            elif kind is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                value = int(value)
            elif kind is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise ScaleshiftError(f"{where} must be a {kind.__name__}, got {value!r}") from None
        if self.choices and value not in self.choices:
            raise ScaleshiftError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ScaleshiftError(f"{where} must be >= {self.minimum}, got {value!r}")
        return value


class Method:
    name: str = ""
    description: str = ""
    options: dict[str, Option] = {}

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise ScaleshiftError(f"unknown option(s) {unknown} for method {self.name!r}; "
                                  f"valid options: {valid}")
        resolved = {}
        for key, option in self.options.items():
            if key in given and given[key] is not None:
                resolved[key] = option.parse(self.name, key, given[key])
            else:
                resolved[key] = option.default
        return resolved

    def inject(self, model: nn.Module, opts: dict[str, Any]) -> Iterable[str]:
        """Insert the method's modules in place; return the parameter names it trains."""
        return []

    def merge(self, model: nn.Module) -> list[dict]:
        """Fold the method into `model` in place; return what could not be folded."""
        return []


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    _REGISTRY[method.name] = method
    return method


def _load_all() -> None:
    # Registration order is the order `methods()` lists them in.
    from . import ssf, linear, full, bias, adapter, vpt, lora  # noqa: F401,I001


def methods() -> list[str]:
    """Names of every method, SSF first."""
    _load_all()
    return list(_REGISTRY)


def get_method(name: str) -> Method:
    _load_all()
    if name not in _REGISTRY:
        raise ScaleshiftError(f"unknown method {name!r}; choose one of {list(_REGISTRY)}")
    return _REGISTRY[name]


def config_of(model: nn.Module) -> dict | None:
    return getattr(model, CONFIG_ATTR, None)


def apply(model: nn.Module, method: str = "ssf", **options) -> nn.Module:
    """Insert `method` into `model` (in place) and freeze all but its parameters and the head."""
    if config_of(model) is not None:
        raise ScaleshiftError(f"this model already has method {config_of(model)['method']!r} "
                              f"applied; create a fresh model to apply another one")
    impl = get_method(method)
    opts = impl.resolve_options(options)
    trainable = set(impl.inject(model, opts)) | classifier_parameter_names(model)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    setattr(model, CONFIG_ATTR, dict(
        method=impl.name, options=opts, model_name=model_name_of(model),
        model_kwargs=getattr(model, "scaleshift_model_kwargs", {}),
        num_classes=getattr(model, "num_classes", None)))
    return model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def total_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def print_trainable_parameters(model: nn.Module) -> None:
    trainable, total = trainable_parameters(model), total_parameters(model)
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
          f"trainable%: {100 * trainable / max(total, 1):.4f}")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)

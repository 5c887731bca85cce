"""What every method shares: the `Method` interface, its `Option`s and the helpers method files
use. A method file imports only this module; the registry in `methods/__init__.py` lists them.

A method is an instance of `Method` in its own file. It declares its options, injects its
modules into a model in place (`inject`, returning the names of the parameters it trains
besides the classifier head) and folds its trained tensors back into a plain state dict
(`merge_state`, a pure function of tensors: no module is touched or copied).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn as nn

from ..errors import ScaleshiftError

CONFIG_ATTR = "scaleshift_config"


@dataclass(frozen=True)
class Option:
    default: Any
    help: str
    choices: tuple = ()      # allowed values (for a list option: allowed items)
    is_list: bool = False    # a list of choices, given as "a,b" on the command line
    minimum: float | None = None
    maximum: float | None = None

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
        if isinstance(value, float) and not math.isfinite(value):
            raise ScaleshiftError(f"{where} must be a finite number, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ScaleshiftError(f"{where} must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ScaleshiftError(f"{where} must be <= {self.maximum}, got {value!r}")
        return value


class Method:
    name: str = ""
    description: str = ""
    options: dict[str, Option] = {}
    # PEFT's name for the method when its adapters are saved in PEFT's format (the method then
    # has to_peft and from_peft_keys); None: PEFT cannot represent it
    peft_type: str | None = None
    supports_transformers: bool = False   # works on the transformers classifiers of profiles.py

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

    def merge_state(self, base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
                    options: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
        """Pure merge: the plain model's state dict `base` + this method's trained tensors (an
        adapter's tensors, keys as saved) -> (the merged plain state dict, what could not fold).
        Default: the trained tensors are plain tensors of the model and replace their base."""
        merged = dict(base)
        for key, value in trained.items():
            plain = plain_key(key)
            if plain not in base:
                raise ScaleshiftError(f"{self.name}: trained tensor {key} is not a tensor of the "
                                      f"plain model; the adapter does not fit this backbone")
            merged[plain] = value
        return merged, []

    def explicit_reference(self, model: nn.Module):
        """A context in which `model` computes the method's formula literally (no folded fast
        path): what merge checks compare the merged model against."""
        return contextlib.nullcontext()


def config_of(model: nn.Module) -> dict | None:
    return getattr(model, CONFIG_ATTR, None)


def plain_key(key: str) -> str:
    """A state-dict key without the wrapper segments methods insert (`.base_layer`)."""
    return key.replace(".base_layer.", ".")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)

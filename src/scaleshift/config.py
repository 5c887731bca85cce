"""Run configuration: a recipe (YAML) gives defaults, `key=value` overrides them.

An unknown key or a value of the wrong type is an error before any work starts. The resolved
config is saved next to the run (config.yaml) and inside every checkpoint.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ScaleshiftError
from .options import parse_assignments, set_path


@dataclass
class RunConfig:
    # what to train
    model: str = "vit_tiny_patch16_224"
    model_kwargs: dict = field(default_factory=dict)    # timm constructor kwargs (img_size, ...)
    pretrained: Any = False                               # False | True (hub) | "path/to/weights"
    method: str = "ssf"
    method_options: dict = field(default_factory=dict)
    # data
    dataset: str = "digits"
    data_root: str | None = None
    dataset_options: dict = field(default_factory=dict)  # e.g. seed of a built-in task
    train_split: str = "train"
    train_offset: int = 0                                 # use items [offset, offset + limit)
    train_limit: int | None = None                        # of the train split (None: all)
    val_split: str | None = None                          # selection split ("clean" protocol)
    test_split: str = "test"
    augment: str = "vtab"                                 # vtab | fgvc | cifar | imagenet
    input_size: int | None = None                         # override the backbone's input size
    # optimisation (SPEC section 4)
    epochs: int = 10
    warmup_epochs: int = 0
    cooldown_epochs: int = 0
    batch_size: int = 32                                  # global, across all processes
    accum_steps: int = 1
    opt: str = "adamw"
    lr: float = 1e-3
    warmup_lr: float = 1e-7
    min_lr: float = 1e-8
    weight_decay: float = 0.05
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    drop_path: float = 0.0
    ema_decay: float | None = None
    precision: str = "fp32"                               # fp32 | bf16 (CPU or CUDA) | fp16 (CUDA)
    cache_features: bool = False                          # linear probing on cached features
    # protocol and bookkeeping
    protocol: str = "clean"                               # clean | official
    test_every_epoch: bool = True   # False: test only the final and the val-selected weights
    seed: int = 42
    workers: int = 0
    device: str = "auto"                                  # auto | cpu | cuda
    out_dir: str = "runs/run"
    log_every: int = 20
    max_steps_per_epoch: int | None = None                # for smoke tests

    CHOICES = {"augment": ("vtab", "fgvc", "cifar", "imagenet"), "precision": ("fp32", "bf16", "fp16"),
               "protocol": ("clean", "official"), "device": ("auto", "cpu", "cuda")}

    def validate(self) -> "RunConfig":
        for key, allowed in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ScaleshiftError(f"{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        positive = ("epochs", "batch_size", "accum_steps", "log_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise ScaleshiftError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_epochs", "cooldown_epochs", "workers", "weight_decay", "train_offset",
                    "label_smoothing", "mixup", "cutmix", "drop_path", "lr"):
            if getattr(self, key) < 0:
                raise ScaleshiftError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.protocol == "clean" and not self.val_split:
            raise ScaleshiftError("protocol=clean selects on a validation split: set val_split "
                                  "(e.g. val200 for VTAB-1k, val for FGVC) or use protocol=official")
        if not self.test_every_epoch and not self.val_split:
            raise ScaleshiftError("test_every_epoch=false needs a val_split to select the epoch")
        if self.batch_size % self.accum_steps:
            raise ScaleshiftError(f"batch_size {self.batch_size} must be divisible by "
                                  f"accum_steps {self.accum_steps}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_HINTS = typing.get_type_hints(RunConfig)
FIELDS = {f.name for f in dataclasses.fields(RunConfig)}


def _coerce(key: str, value: Any) -> Any:
    hint = _HINTS[key]
    if hint is Any:
        return value
    allowed = typing.get_args(hint) or (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ScaleshiftError(f"{key} cannot be null")
    for kind in allowed:
        if kind is type(None):
            continue
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):   # YAML 1.1 reads 3e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool, dict) and isinstance(value, kind):
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise ScaleshiftError(f"{key} must be {names}, got {value!r} ({type(value).__name__})")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`key=value` (value parsed as YAML); `a.b=value` sets a key inside a mapping field."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for path, value in parse_assignments(list(overrides)):
        if path[0] not in FIELDS:
            raise ScaleshiftError(f"unknown config key {path[0]!r}; valid keys: {', '.join(sorted(FIELDS))}")
        if len(path) > 1 and _HINTS[path[0]] is not dict:
            raise ScaleshiftError(f"{path[0]} is not a mapping; use {path[0]}=value")
        set_path(data, path, value)
    return data


def make_config(data: dict) -> RunConfig:
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ScaleshiftError(f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(FIELDS))}")
    return RunConfig(**{k: _coerce(k, v) for k, v in data.items()}).validate()


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Recipe file (or none: the defaults) + overrides -> validated RunConfig."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ScaleshiftError(f"recipe {path} not found; list them with `scaleshift list recipes`")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ScaleshiftError(f"recipe {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ScaleshiftError(f"recipe {path} must be a mapping of config keys")
    return make_config(apply_overrides(data, list(overrides)))

"""Run configuration: a recipe (YAML) gives defaults, `key=value` overrides them.

An unknown key or a value of the wrong type is an error before any work starts. The resolved
config is saved next to the run (config.yaml) and inside every checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
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
    retrain_split: str | None = None   # clean protocol stage 2: retrain on it for the selected epochs
    test_split: str | None = "test"                       # None: no test (selection only)
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
    drop_path: float | None = None                        # None: the architecture's own default
    ema_decay: float | None = None
    random_erasing: float = 0.0                           # per image, on the batch after mixup
    precision: str = "fp32"                               # fp32 | bf16 (CPU or CUDA) | fp16 (CUDA)
    cache_features: bool = False                          # linear probing on cached features
    # protocol and bookkeeping
    protocol: str = "clean"                               # clean | official
    test_every_epoch: bool = True   # False: test only the final and the val-selected weights
    stop_epoch: int | None = None   # stop after this epoch of the schedule (clean stage 2)
    seed: int = 42
    workers: int = 0
    device: str = "auto"                                  # auto | cpu | cuda
    out_dir: str = "runs/run"
    log_every: int = 20
    max_steps_per_epoch: int | None = None                # for smoke tests

    CHOICES = {"augment": ("vtab", "fgvc", "cifar", "imagenet"), "precision": ("fp32", "bf16", "fp16"),
               "protocol": ("clean", "official"), "device": ("auto", "cpu", "cuda")}

    def validate(self) -> "RunConfig":
        """Everything `train` would later find out, checked before any file is written or any
        model is built: values and their ranges, the combinations, then the model name, the
        dataset and its splits, and the method with every option."""
        self._check_values()
        self._check_combinations()
        self._check_names()
        return self

    def _check_values(self) -> None:
        for key, allowed in self.CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ScaleshiftError(f"{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        for key in FLOAT_FIELDS:
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise ScaleshiftError(f"{key} must be a finite number, got {value}")
        for key, (low, high, hint) in RANGES.items():
            value = getattr(self, key)
            if value is None:
                continue
            if (low is not None and value < low) or (high is not None and value > high) \
                    or (key in OPEN_BELOW and value <= low) or (key in OPEN_ABOVE and value >= high):
                raise ScaleshiftError(f"{key} must be {hint}, got {value}")

    def _check_combinations(self) -> None:
        if self.protocol == "clean" and not self.val_split:
            raise ScaleshiftError("protocol=clean selects on a validation split: set val_split "
                                  "(e.g. val200 for VTAB-1k, val for FGVC) or use protocol=official")
        if self.retrain_split and (self.protocol != "clean" or not self.val_split):
            raise ScaleshiftError("retrain_split is the second stage of the clean protocol: it "
                                  "needs protocol=clean and a val_split to select the epoch count")
        if self.batch_size % self.accum_steps:
            raise ScaleshiftError(f"batch_size {self.batch_size} must be divisible by "
                                  f"accum_steps {self.accum_steps}")
        if self.cache_features and self.method != "linear":
            raise ScaleshiftError("cache_features works with method=linear only (the backbone must "
                                  "stay frozen); drop cache_features or use method=linear")
        if self.cache_features and self.augment != "vtab":
            raise ScaleshiftError("cache_features needs augment=vtab: cached features cannot be "
                                  "augmented")
        if self.precision == "fp16" and self.device == "cpu":
            raise ScaleshiftError("precision=fp16 needs CUDA; use precision=bf16 on CPU")

    def _check_names(self) -> None:
        from .data import get_dataset_spec
        from .methods import get_method
        from .models import check_model_name
        check_model_name(self.model)
        spec = get_dataset_spec(self.dataset)
        for key in ("train_split", "val_split", "test_split", "retrain_split"):
            split = getattr(self, key)
            if split is not None:
                try:
                    spec.resolve_split(split)
                except ScaleshiftError as exc:
                    raise ScaleshiftError(f"{key}: {exc}") from None
        get_method(self.method).resolve_options(self.method_options)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_HINTS = typing.get_type_hints(RunConfig)
FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
FLOAT_FIELDS = [k for k, hint in _HINTS.items() if float in (typing.get_args(hint) or (hint,))]
# key -> (lowest, highest, what the message asks for); OPEN_*: the bound itself is excluded
RANGES = {
    "epochs": (1, None, ">= 1"), "batch_size": (1, None, ">= 1"), "accum_steps": (1, None, ">= 1"),
    "log_every": (1, None, ">= 1"), "warmup_epochs": (0, None, ">= 0"),
    "cooldown_epochs": (0, None, ">= 0"), "workers": (0, None, ">= 0"),
    "train_offset": (0, None, ">= 0"), "train_limit": (1, None, ">= 1"),
    "max_steps_per_epoch": (1, None, ">= 1"), "stop_epoch": (1, None, ">= 1"), "input_size": (1, None, ">= 1 (pixels)"),
    "lr": (0.0, None, "> 0"), "warmup_lr": (0.0, None, ">= 0"), "min_lr": (0.0, None, ">= 0"),
    "weight_decay": (0.0, None, ">= 0"), "grad_clip": (0.0, None, "> 0 (or null for none)"),
    "label_smoothing": (0.0, 1.0, "in [0, 1)"), "mixup": (0.0, None, ">= 0"),
    "cutmix": (0.0, None, ">= 0"), "drop_path": (0.0, 1.0, "in [0, 1)"),
    "random_erasing": (0.0, 1.0, "in [0, 1]"),
    "ema_decay": (0.0, 1.0, "in (0, 1), e.g. 0.9998 (or null for no EMA)"),
}
OPEN_BELOW = {"lr", "grad_clip", "ema_decay"}
OPEN_ABOVE = {"label_smoothing", "drop_path", "ema_decay"}


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

"""Run configuration: a recipe (YAML) gives defaults, `key=value` overrides them.

An unknown key or a value of the wrong type is an error before any work starts. The resolved
config is saved next to the run (config.yaml) and inside every checkpoint.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import inspect
import math
import re
import tokenize
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
    model: str = "vit_tiny_patch16_224"                 # timm or embedded: scaleshift list models PATTERN
    model_kwargs: dict = field(default_factory=dict)    # timm constructor kwargs (img_size, ...)
    pretrained: Any = False                               # False | True (hub) | "path/to/weights"
    method: str = "ssf"
    method_options: dict = field(default_factory=dict)  # method_options.layers=4; see scaleshift methods
    # data
    dataset: str = "digits"                               # see scaleshift datasets
    data_root: str | None = None
    dataset_options: dict = field(default_factory=dict)  # e.g. seed of a built-in task
    train_split: str = "train"
    train_offset: int = 0                                 # use items [offset, offset + limit)
    train_limit: int | None = None                        # of the train split (None: all)
    val_split: str | None = None                          # selection split ("clean" protocol)
    retrain_split: str | None = None   # clean protocol stage 2: retrain on it for the selected epochs
    test_split: str | None = "test"                       # None: no test (selection only)
    test_limit: int | None = None                         # test on the first N items only (None: all)
    augment: str = "vtab"                                 # vtab | fgvc | cifar | imagenet
    input_size: int | None = None                         # override the backbone's input size
    # optimisation (defaults as in the official SSF training scripts)
    epochs: int = 10
    warmup_epochs: int = 0
    sched_on_updates: bool = False   # true: warm-up + cosine advance every optimizer update (timm's --sched-on-updates); false: once per epoch, as the official recipes
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
    batchnorm: str = "update"   # update: BatchNorm running stats follow the training batches | frozen: kept
    ema_decay: float | None = None
    random_erasing: float = 0.0                           # per image, on the batch after mixup
    precision: str = "fp32"   # fp32 | bf16 (CPU or CUDA) | fp16 (CUDA) | auto: bf16 where the hardware has it, else fp32
    compile: str = "none"   # inductor: torch.compile the training forward (eval stays eager) | aot_eager | none
    cache_features: bool = False                          # linear probing on cached features
    cache_prefix: bool | None = None   # blocks before layers=last:k computed once. null: when training is deterministic; true: or refuse
    cache_prefix_mb: int = 4096        # prefix cache kept in memory; splits past it go to files in out_dir
    # protocol and bookkeeping
    protocol: str = "clean"                               # clean | official
    test_every_epoch: bool = True   # False: test only the final and the val-selected weights
    stop_epoch: int | None = None   # stop after this epoch of the schedule (clean stage 2)
    seed: int = 42
    workers: int = 0
    device: str = "auto"                                  # auto | cpu | cuda
    out_dir: str = "runs/run"
    log_every: int = 20
    logger: str = "none"              # tensorboard: scalars also under out_dir/tensorboard/
    max_steps_per_epoch: int | None = None                # for smoke tests

    CHOICES = {"augment": ("vtab", "fgvc", "cifar", "imagenet"), "precision": ("fp32", "bf16", "fp16", "auto"),
               "protocol": ("clean", "official"), "device": ("auto", "cpu", "cuda"),
               "batchnorm": ("update", "frozen"), "logger": ("none", "tensorboard"),
               "compile": ("none", "inductor", "aot_eager")}

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
        if self.cache_prefix:
            random = [f"{key}={getattr(self, key)}" for key in ("mixup", "cutmix", "random_erasing")
                      if getattr(self, key)]
            if self.augment != "vtab" or random:
                raise ScaleshiftError(f"cache_prefix=true needs a deterministic training transform "
                                      f"(augment=vtab, no mixup, cutmix or random erasing), but "
                                      f"{', '.join(random) or f'augment={self.augment}'} changes the "
                                      f"images every epoch; drop it or set cache_prefix=false")
            if self.cache_features:
                raise ScaleshiftError("cache_features and cache_prefix both cache the frozen "
                                      "backbone; set one of them")
        if self.precision == "fp16" and self.device == "cpu":
            raise ScaleshiftError("precision=fp16 needs CUDA; use precision=bf16 on CPU")
        for key in ("min_lr", "warmup_lr"):
            if getattr(self, key) > self.lr:
                raise ScaleshiftError(f"{key}={getattr(self, key):g} is above lr={self.lr:g}, so the "
                                      f"schedule would raise the learning rate past the one set; set "
                                      f"{key} below lr (default {getattr(RunConfig, key):g})")
        last = self.epochs + self.cooldown_epochs
        if self.stop_epoch is not None and self.stop_epoch > last:
            raise ScaleshiftError(f"stop_epoch={self.stop_epoch} is past the schedule's last epoch "
                                  f"(epochs + cooldown_epochs = {last}); lower it or leave it out")
        check_optimizer(self.opt)
        if not self.out_dir.strip():
            raise ScaleshiftError("out_dir is empty; pass the folder the run goes to (out_dir=runs/NAME)")

    def _check_names(self) -> None:
        from .data import get_dataset_spec
        from .methods import get_method
        from .models import check_model_name
        check_model_name(self.model)
        if self.model_kwargs:
            from .models import check_kwargs_of
            check_kwargs_of(self.model, self.model_kwargs)
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
    "train_offset": (0, None, ">= 0"), "train_limit": (1, None, ">= 1"), "test_limit": (1, None, ">= 1"),
    "max_steps_per_epoch": (1, None, ">= 1"), "stop_epoch": (1, None, ">= 1"), "input_size": (1, 4096, "in 1..4096 (pixels)"),
    "seed": (0, 2**63 - 1, "in 0..2**63-1 (torch takes a 64-bit seed)"),
    "cache_prefix_mb": (0, None, ">= 0 (MB)"),
    "lr": (0.0, None, "> 0"), "warmup_lr": (0.0, None, ">= 0"), "min_lr": (0.0, None, ">= 0"),
    "weight_decay": (0.0, None, ">= 0"), "grad_clip": (0.0, None, "> 0 (or null for none)"),
    "label_smoothing": (0.0, 1.0, "in [0, 1)"), "mixup": (0.0, None, ">= 0"),
    "cutmix": (0.0, None, ">= 0"), "drop_path": (0.0, 1.0, "in [0, 1)"),
    "random_erasing": (0.0, 1.0, "in [0, 1]"),
    "ema_decay": (0.0, 1.0, "in (0, 1), e.g. 0.9998 (or null for no EMA)"),
}
OPEN_BELOW = {"lr", "grad_clip", "ema_decay"}
OPEN_ABOVE = {"label_smoothing", "drop_path", "ema_decay"}


def _type_name(hint: Any) -> str:
    if hint is Any:
        return "any"
    kinds = typing.get_args(hint) or (hint,)
    return " | ".join("null" if k is type(None) else getattr(k, "__name__", str(k)) for k in kinds)


def _yaml_text(value: Any) -> str:
    """A default as one types it after key= (the YAML the option grammar reads)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float, str)):
        return repr(value) if isinstance(value, float) else (str(value) or "''")
    return yaml.safe_dump(value, default_flow_style=True).strip()


def _source_comments() -> tuple[dict[str, str], dict[str, str]]:
    """From RunConfig's own source: the comment after each field, and the section comment
    above it ('# data'). Empty when the source is not available."""
    try:
        lines = inspect.getsource(RunConfig).splitlines(keepends=True)
        tokens = list(tokenize.generate_tokens(iter(lines).__next__))
    except (OSError, TypeError, tokenize.TokenError):
        return {}, {}
    comments = {tok.start[0]: tok.string.lstrip("#").strip() for tok in tokens
                if tok.type == tokenize.COMMENT}
    field_line = re.compile(r"^    (\w+)\s*:")
    notes, sections, section = {}, {}, ""
    for number, line in enumerate(lines, start=1):
        if line.strip().startswith("#"):
            section = comments.get(number, "")
            continue
        match = field_line.match(line)
        if match and match.group(1) in FIELDS:
            notes[match.group(1)] = comments.get(number, "")
            sections[match.group(1)] = section
    return notes, sections


def describe_keys() -> str:
    """Every RunConfig key with its type, default, choices or range and note, grouped as the
    dataclass groups them; generated from the dataclass, CHOICES, RANGES and the method
    registry (`scaleshift train --help`)."""
    from .methods import methods
    choices = dict(RunConfig.CHOICES, method=tuple(methods()))
    notes, sections = _source_comments()
    rows = []
    for f in dataclasses.fields(RunConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        allowed = choices.get(f.name)
        rule = "{" + ", ".join(allowed) + "}" if allowed else RANGES.get(f.name, (None, None, ""))[2]
        note = notes.get(f.name, "")
        if allowed and note == " | ".join(allowed):   # the comment only repeats the choices
            note = ""
        rows.append((sections.get(f.name, ""), f.name, _type_name(_HINTS[f.name]),
                     _yaml_text(default), "; ".join(x for x in (rule, note) if x)))
    widths = [max(len(r[i]) for r in rows) for i in range(1, 4)]
    lines, section = ["    " + "  ".join(h.ljust(w) for h, w in zip(("KEY", "TYPE", "DEFAULT"), widths))
                      + "  ALLOWED; NOTE"], None
    for row in rows:
        if row[0] != section:
            section = row[0]
            lines.append(f"  {section}:" if section else "  other:")
        cells = "  ".join(c.ljust(w) for c, w in zip(row[1:4], widths))
        lines.append(f"    {cells}  {row[4]}".rstrip())
    return "\n".join(lines)


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


def unknown_keys_error(keys: list[str]) -> ScaleshiftError:
    """Unknown config key(s), each with the closest valid keys (difflib)."""
    parts = []
    for key in keys:
        close = difflib.get_close_matches(key, sorted(FIELDS), n=3, cutoff=0.6)
        parts.append(f"{key!r}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    return ScaleshiftError(f"unknown config key {', '.join(parts)}; every key is listed by "
                           f"`scaleshift train --help`")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`key=value` (value parsed as YAML); `a.b=value` sets a key inside a mapping field."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for path, value in parse_assignments(list(overrides)):
        if path[0] not in FIELDS:
            raise unknown_keys_error([path[0]])
        if len(path) > 1 and _HINTS[path[0]] is not dict:
            raise ScaleshiftError(f"{path[0]} is not a mapping; use {path[0]}=value")
        set_path(data, path, value)
    return data


def make_config(data: dict) -> RunConfig:
    for where, mapping in [("", data)] + [(f"{k}.", v) for k, v in data.items() if isinstance(v, dict)]:
        named = [k for k in mapping if not isinstance(k, str)]
        if named:
            raise ScaleshiftError(f"config key {where}{named[0]!r} is not a name: every key of a "
                                  f"recipe (and of its mappings) is text, e.g. epochs: 10")
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise unknown_keys_error(unknown)
    return RunConfig(**{k: _coerce(k, v) for k, v in data.items()}).validate()


def flags_to_assignments(tokens: list[str], own_flags: set[str]) -> list[str]:
    """`--key value` and `--key=value` (dashes or underscores) -> `key=value`, for every
    config key; `own_flags` (the command's own, e.g. --resume) and other tokens pass through.
    A bool key given alone (`--cache-features`) is true."""
    out, rest = [], list(tokens)
    while rest:
        token = rest.pop(0)
        if token == "--":
            return out + [token, *rest]
        if not token.startswith("--") or token.partition("=")[0] in own_flags:
            out.append(token)
            continue
        key, sep, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not sep:
            if rest and not rest[0].startswith("--"):
                value = rest.pop(0)
            elif key in FIELDS and _HINTS[key] is bool:
                value = "true"
            else:
                raise ScaleshiftError(f"--{key.replace('_', '-')} needs a value: give --{key} "
                                      f"VALUE, --{key}=VALUE or {key}=VALUE")
        out.append(f"{key}={value}")
    return out


def check_optimizer(opt: str) -> None:
    """`opt` names an optimizer of timm's registry (optionally 'lookahead_NAME') the loop runs."""
    import timm.optim
    name = opt.lower().removeprefix("lookahead_")
    if name.startswith(("bnb", "fused")):
        why = "needs CUDA and bitsandbytes or APEX, which scaleshift does not install"
    elif name == "adahessian":
        why = "needs a second-order backward pass, which the training loop does not run"
    elif name not in timm.optim.list_optimizers():
        why = "is not one of timm's optimizers"
    else:
        return
    raise ScaleshiftError(f"opt={opt!r} {why}; use adamw (the paper's), sgd, momentum, lamb, lion or "
                          f"another name `python -c \"import timm.optim; print(timm.optim."
                          f"list_optimizers())\"` prints")


def check_train_range(cfg: RunConfig, items: int) -> range:
    """The items train_offset (and train_limit) pick of the train split's: a non-empty range."""
    stop = items if cfg.train_limit is None else cfg.train_offset + cfg.train_limit
    if cfg.train_offset >= items or stop > items:
        what = (f"train_offset + train_limit = {stop}" if cfg.train_limit is not None
                else f"train_offset = {cfg.train_offset}")
        raise ScaleshiftError(f"{what} exceeds the {items} items of split {cfg.train_split!r}; "
                              f"lower it")
    return range(cfg.train_offset, stop)


def check_environment(cfg: RunConfig) -> None:
    """What `train --validate-only` checks beyond the values (and train before any work): the
    data and weights paths exist, and every optional package the run needs imports."""
    from .data import get_dataset_spec
    from .data.registry import check_dataset_options
    from .extras import require
    spec = get_dataset_spec(cfg.dataset)
    check_dataset_options(spec.name, cfg.dataset_options)
    if cfg.data_root is not None and not Path(cfg.data_root).is_dir():
        raise ScaleshiftError(f"data_root {cfg.data_root} is not an existing folder; set "
                              f"data_root= to the folder holding {spec.name} "
                              f"(layout: `scaleshift datasets`)")
    if spec.needs_root and cfg.data_root is None:
        raise ScaleshiftError(f"dataset {spec.name} needs data_root=FOLDER (layout: "
                              f"`scaleshift datasets`)")
    if not isinstance(cfg.pretrained, (bool, str)):
        raise ScaleshiftError(f"pretrained must be true (timm's weights), false (random init) or "
                              f"the path of a weights file, got {str(cfg.pretrained)[:40]!r}")
    if isinstance(cfg.pretrained, str) and not Path(cfg.pretrained).is_file():
        what = "is a folder" if cfg.pretrained.strip() and Path(cfg.pretrained).is_dir() else \
            "is empty" if not cfg.pretrained.strip() else "no such file"
        raise ScaleshiftError(f"pretrained={cfg.pretrained!r}: {what}; give the backbone's "
                              f"weights file, pretrained=true (timm's weights) or false")
    import torch
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ScaleshiftError("device=cuda but no CUDA device is available; use device=cpu")
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        raise ScaleshiftError("precision=fp16 needs CUDA, and this machine has none; use "
                              "precision=bf16 or auto")
    needs = [(module, f"dataset {spec.name}") for module in spec.extras]
    if cfg.method == "lora":
        needs.append(("peft", "method=lora"))
    if cfg.logger == "tensorboard":
        needs.append(("tensorboard", "logger=tensorboard"))
    for module, purpose in needs:
        require(module, purpose)
    if cfg.train_offset or cfg.train_limit is not None:
        from .data import build_dataset   # the split's length is what the offset is checked against
        check_train_range(cfg, len(build_dataset(spec.name, root=cfg.data_root, split=cfg.train_split,
                                                 **cfg.dataset_options)))


RECIPE_SUFFIX = ".yaml"


def _packaged_recipes():
    """The recipes/ folder shipped inside the package (a Traversable: a wheel, a zip, a tree)."""
    return importlib.resources.files("scaleshift").joinpath("recipes")


def recipe_names() -> list[str]:
    """Every packaged recipe by the name `scaleshift train` takes: 'vtab/dtd_ssf'."""
    names: list[str] = []

    def walk(folder, prefix: str) -> None:
        for child in folder.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(RECIPE_SUFFIX):
                names.append(prefix + child.name[:-len(RECIPE_SUFFIX)])
    root = _packaged_recipes()
    if root.is_dir():
        walk(root, "")
    return sorted(names)


def find_recipe(name: str | Path) -> tuple[str, str]:
    """(where it came from, YAML text) of a recipe. A file path wins; otherwise `name` is a
    packaged recipe ('vtab/dtd_ssf', with or without .yaml; 'recipes/vtab/dtd_ssf.yaml', the
    repository path before recipes became package data, names the same one)."""
    path = Path(name)
    if path.is_file():
        try:
            return str(path), path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScaleshiftError(f"cannot read recipe {path}: {exc}") from None
    key = path.as_posix().removesuffix(RECIPE_SUFFIX).removeprefix("recipes/")
    known = recipe_names()
    if key in known:
        node = _packaged_recipes()
        for part in (key + RECIPE_SUFFIX).split("/"):
            node = node.joinpath(part)
        return f"packaged recipe {key}", node.read_text(encoding="utf-8")
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ScaleshiftError(f"recipe {str(name)!r} is neither a file nor a packaged recipe "
                          f"(`scaleshift list recipes` lists them){hint}")


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Recipe (a YAML file or a packaged recipe name; none: the defaults) + overrides ->
    validated RunConfig."""
    data: dict = {}
    if path is not None:
        where, text = find_recipe(path)
        from .records import read_yaml
        data = read_yaml(text, f"recipe {where}") or {}
        if not isinstance(data, dict):
            raise ScaleshiftError(f"recipe {where} must be a mapping of config keys")
    return make_config(apply_overrides(data, list(overrides)))

"""The dataset registry: every family module's SPECS, looked up by name, listed and built."""
from __future__ import annotations

import inspect

from ..errors import ScaleshiftError
from ..records import MAX_CLASSES, MAX_SEED, check_int
from . import builtin, cifar, elpv, fgvc, folder, imagenet, imagenet_c, patches, structured, vtab
from .base import DatasetSpec

_REGISTRY: dict[str, DatasetSpec] = {}
_NAMES: dict[str, str] = {}            # any accepted name -> registry name


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace("/", "_")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset spec (its `name` and extra `names` become valid dataset names)."""
    for name in (spec.name, *spec.names):
        key = _key(name)
        if key in _NAMES and _NAMES[key] != spec.name:
            raise ValueError(f"dataset name {name!r} is taken by {_NAMES[key]!r}")
        _NAMES[key] = spec.name
    _REGISTRY[spec.name] = spec
    return spec


def get_dataset_spec(name: str) -> DatasetSpec:
    key = _key(name)
    if key not in _NAMES:
        raise ScaleshiftError(f"unknown dataset {name!r}; see `scaleshift datasets` "
                              f"({len(_REGISTRY)} datasets: {', '.join(_REGISTRY)})")
    return _REGISTRY[_NAMES[key]]


def list_datasets(group: str | None = None) -> list[str]:
    """Registered names in listing order; `group` filters (fgvc, natural, specialized,
    structured, classification, robustness, builtin, or vtab for all 19 VTAB tasks)."""
    if group is None:
        return list(_REGISTRY)
    names = [n for n, s in _REGISTRY.items()
             if s.group == group or (group == "vtab" and n.startswith("vtab_"))]
    if not names:
        groups = sorted({s.group for s in _REGISTRY.values()} | {"vtab"})
        raise ScaleshiftError(f"unknown dataset group {group!r}; groups: {', '.join(groups)}")
    return names


def build_dataset(name: str, root=None, split: str | None = None, transform=None, **options):
    """The Dataset of `name` / `split` at `root`, yielding (transform(PIL RGB image), int label).

    `split` defaults to "train", or to the only split of single-split sets (ImageNet-A / -R).

    `options` go to the family's builder: strict (fail on unreadable images), num_classes
    (expected class count, for partial trees), protocol (FGVC), seed (built-ins), sprites
    (structured tasks), download (CIFAR-100). An unknown option is an error."""
    spec = get_dataset_spec(name)
    if split is None:
        trains = "train" in spec.splits or "train" in spec.split_aliases
        split = "train" if trains or len(spec.splits) != 1 else spec.splits[0]
    split = spec.resolve_split(split)
    if spec.needs_root and root is None:
        raise ScaleshiftError(f"{spec.name} needs a root folder; expected layout:\n{spec.layout}")
    check_dataset_options(spec.name, options)
    dataset = spec.build(root=root, split=split, **options)
    dataset.transform = transform
    return dataset


# the values a builder's option may take: whole numbers in a range (None: the builder's default)
_INT_OPTIONS = {"seed": (0, MAX_SEED), "size": (8, 4096), "canvas": (32, 1024),
                "num_classes": (1, MAX_CLASSES)}
_BOOL_OPTIONS = ("strict", "download")


def check_dataset_options(name: str, options: dict) -> None:
    """Every option is one the dataset's builder takes, with a value of the right kind."""
    spec = get_dataset_spec(name)
    accepted = [p for p in inspect.signature(spec.build).parameters if p not in ("root", "split")]
    unknown = sorted(str(k) for k in options if k not in accepted)
    if unknown:
        raise ScaleshiftError(f"{spec.name} does not take option(s) {', '.join(unknown)}; "
                              f"options: {', '.join(accepted)}")
    where = f"dataset {spec.name}"
    for key, value in options.items():
        if key in _INT_OPTIONS and value is not None:
            check_int(value, f"dataset_options.{key}", where, *_INT_OPTIONS[key])
        if key in _BOOL_OPTIONS and not isinstance(value, bool):
            raise ScaleshiftError(f"{where}: dataset_options.{key} must be true or false, got "
                                  f"{value!r}")


# The registry table: every family module lists its specs in SPECS; this is the listing order.
FAMILIES = (fgvc, vtab, cifar, imagenet, imagenet_c, folder, builtin, patches, structured, elpv)
for spec in (spec for family in FAMILIES for spec in family.SPECS):
    register_dataset(spec)

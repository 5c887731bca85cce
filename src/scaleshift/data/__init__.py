"""Datasets: every benchmark of the paper in its standard on-disk format, plus built-in offline
data. One file per family; `scaleshift datasets` prints each name, classes, splits and layout.

    from scaleshift.data import build_dataset, build_transform, check_dataset
    ds = build_dataset("vtab_dtd", root="data/vtab-1k", split="train800val200",
                       transform=build_transform("vtab", model, is_training=True))
    image, label = ds[0]                                   # tensor (or PIL), int
    ds.skipped                                             # [(path, reason)] of skipped images
    report = check_dataset("cub2011", "data/CUB_200_2011")  # counts, classes, unreadable files

Families: fgvc.py (CUB, NABirds, Flowers, Dogs, Cars; VPT json + official SSF protocols),
vtab.py (19 VTAB-1k tasks, NOAH export), cifar.py, imagenet.py (ImageNet-1K, -A, -R with the
200-class masks), imagenet_c.py (ImageNet-C, CE / mCE), folder.py (your own class folders),
builtin.py (fashion-mnist, digits, fashion-mnist-C, upstream pretraining data), patches.py
(scikit-image photo patch tasks, faces), structured.py (procedural structured tasks),
elpv.py (solar-cell EL images from the elpv-dataset wheel, installed on demand). Tasks whose
names end in _96 are drawn at 96 px for real ImageNet backbones (EfficientNet-Lite).
Registration is explicit: each family lists its specs in SPECS and `_register_families` adds
them below.
"""
from __future__ import annotations

import inspect

from ..errors import ScaleshiftError
from .base import DatasetSpec, Generated, ImageFiles, skipped_counts
from .check import check_dataset
from .imagenet import imagenet_a_mask, imagenet_r_mask, imagenet_wnids, subset_predictions
from .images import UnreadableImage, load_rgb
from .imagenet_c import ALEXNET_ERRORS, corruption_errors, mce
from .transforms import (build_transform, eval_transform_config, resolve_config,
                         transform_from_config)
from .vtab import vtab_means

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
    try:
        inspect.signature(spec.build).bind(root=root, split=split, **options)
    except TypeError:
        accepted = [p for p in inspect.signature(spec.build).parameters
                    if p not in ("root", "split")]
        raise ScaleshiftError(f"{spec.name} does not take option(s) "
                              f"{', '.join(sorted(set(options) - set(accepted)))}; "
                              f"options: {', '.join(accepted)}") from None
    dataset = spec.build(root=root, split=split, **options)
    dataset.transform = transform
    return dataset


def _register_families() -> None:
    from . import (builtin, cifar, elpv, fgvc, folder, imagenet, imagenet_c, patches, structured,
                   vtab)
    for family in (fgvc, vtab, cifar, imagenet, imagenet_c, folder, builtin, patches,
                   structured, elpv):
        for spec in family.SPECS:
            register_dataset(spec)


_register_families()

__all__ = [
    "DatasetSpec", "ImageFiles", "Generated", "load_rgb", "UnreadableImage", "skipped_counts",
    "register_dataset",
    "get_dataset_spec", "list_datasets", "build_dataset", "check_dataset", "build_transform",
    "eval_transform_config", "transform_from_config",
    "resolve_config", "imagenet_a_mask", "imagenet_r_mask", "imagenet_wnids",
    "subset_predictions", "ALEXNET_ERRORS", "corruption_errors", "mce", "vtab_means",
]

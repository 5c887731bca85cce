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
Registration is explicit: each family lists its specs in SPECS and registry.py adds them.
"""
from __future__ import annotations

from .base import DatasetSpec, Generated, ImageFiles, skipped_counts
from .check import check_dataset
from .imagenet import imagenet_a_mask, imagenet_r_mask, imagenet_wnids, subset_predictions
from .images import UnreadableImage, load_rgb
from .imagenet_c import ALEXNET_ERRORS, corruption_errors, mce
from .registry import build_dataset, get_dataset_spec, list_datasets, register_dataset
from .transforms import (build_transform, eval_transform_config, resolve_config,
                         transform_from_config)
from .vtab import vtab_means

__all__ = [
    "DatasetSpec", "ImageFiles", "Generated", "load_rgb", "UnreadableImage", "skipped_counts",
    "register_dataset",
    "get_dataset_spec", "list_datasets", "build_dataset", "check_dataset", "build_transform",
    "eval_transform_config", "transform_from_config",
    "resolve_config", "imagenet_a_mask", "imagenet_r_mask", "imagenet_wnids",
    "subset_predictions", "ALEXNET_ERRORS", "corruption_errors", "mce", "vtab_means",
]

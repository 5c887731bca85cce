"""CIFAR-100 through torchvision, which checks the files' md5 sums.

    <root>/cifar-100-python/train     the python-version archive, unpacked
    <root>/cifar-100-python/test
    <root>/cifar-100-python/meta

Nothing is downloaded unless `download=True` is passed (this machine may be offline). `--root`
may also be the cifar-100-python folder itself.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ScaleshiftError
from .base import DatasetSpec, layout_error

LAYOUT = """\
<root>/cifar-100-python/{train,test,meta}   the unpacked cifar-100-python.tar.gz
                                            (torchvision verifies the md5 sums)"""
FOLDER = "cifar-100-python"


def build_cifar100(root, split="train", *, download=False, num_classes=None, strict=False):
    from torchvision.datasets import CIFAR100
    root = Path(root)
    if root.name == FOLDER and not (root / FOLDER).exists():
        root = root.parent
    if num_classes not in (None, 100):
        raise ScaleshiftError(f"CIFAR-100 has 100 classes, not {num_classes}")
    if not download:
        for name in ("train", "test", "meta"):
            if not (root / FOLDER / name).is_file():
                raise layout_error("file", root / FOLDER / name,
                                   LAYOUT + "\n(pass download=True to fetch it when online)")
    try:
        dataset = CIFAR100(str(root), train=split == "train", download=download)
    except (RuntimeError, OSError) as exc:   # corrupted files, or no network for download
        raise ScaleshiftError(f"CIFAR-100 at {root / FOLDER} could not be loaded ({exc})\n"
                              f"expected layout:\n{LAYOUT}") from exc
    dataset.num_classes = 100
    return dataset


SPECS = [
    DatasetSpec("cifar100", 100, ("train", "test"), LAYOUT, "classification", build_cifar100,
                description="CIFAR-100 (torchvision format)", names=("cifar_100",)),
]

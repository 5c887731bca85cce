"""Class-folder trees: the generic `image_folder` dataset for users' own data, and the folder
scanner the ImageNet and official Flowers / Cars loaders share.

    <root>/train/<class name>/<image>      any depth below the class folder
    <root>/val/<class name>/<image>        optional
    <root>/test/<class name>/<image>       optional

Classes are the class folders of the first split present (train, else val, else test), in
natural order ('2' before '10', as timm orders them); every other split must use a subset of
those names, so a label means the same class in every split.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ScaleshiftError
from .base import IMAGE_EXTENSIONS, DatasetSpec, ImageFiles, layout_error, natural_key

LAYOUT = """\
<root>/train/<class name>/<image>   (.jpg .jpeg .png .bmp .webp .tif ...; any depth)
<root>/val/<class name>/<image>     (optional)
<root>/test/<class name>/<image>    (optional)
classes = class folders of the first split present, natural order ('2' before '10')"""
SPLITS = ("train", "val", "test")


def scan_class_folders(split_dir: Path, layout: str) -> dict[str, list[Path]]:
    """{class folder name: sorted image paths below it}, classes in natural order."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise layout_error("folder", split_dir, layout)
    entries = sorted(split_dir.iterdir(), key=lambda p: natural_key(p.name))
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        raise ScaleshiftError(f"{len(loose)} images lie directly in {split_dir} (e.g. "
                              f"{loose[0].name}); put each image in a folder named after its "
                              f"class\nexpected layout:\n{layout}")
    classes = {}
    for folder in entries:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            files += [Path(dirpath) / f for f in filenames
                      if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        classes[folder.name] = sorted(files, key=lambda p: natural_key(str(p)))
    if not classes:
        raise ScaleshiftError(f"no class folders in {split_dir}\nexpected layout:\n{layout}")
    return classes


def folder_samples(split_dir: Path, class_names: list[str], layout: str
                   ) -> list[tuple[Path, int]]:
    """Samples of `split_dir` labelled by position in `class_names`; unknown folders are errors."""
    found = scan_class_folders(split_dir, layout)
    unknown = sorted(set(found) - set(class_names), key=natural_key)
    if unknown:
        raise ScaleshiftError(f"class folder {split_dir / unknown[0]} is not a class of the "
                              f"training split ({len(unknown)} unknown folders)")
    index = {name: i for i, name in enumerate(class_names)}
    return [(path, index[name]) for name, paths in found.items() for path in paths]


def check_class_count(found: int, expected: int | None, where: Path, layout: str) -> None:
    if expected is not None and found != expected:
        raise ScaleshiftError(f"{where} has {found} class folders, expected {expected} (a "
                              f"missing class folder would shift every label after it)\n"
                              f"expected layout:\n{layout}")


def _present_splits(root: Path | None) -> tuple[str, ...]:
    present = tuple(s for s in SPLITS if root is not None and (Path(root) / s).is_dir())
    if not present:
        raise layout_error("split folder (train/, val/ or test/)", Path(root or "."), LAYOUT)
    return present


def build_image_folder(root, split="train", *, num_classes=None, strict=False):
    root = Path(root)
    first = _present_splits(root)[0]
    class_names = list(scan_class_folders(root / first, LAYOUT))
    check_class_count(len(class_names), num_classes, root / first, LAYOUT)
    samples = folder_samples(root / split, class_names, LAYOUT)
    return ImageFiles(samples, len(class_names), class_names, strict=strict,
                      meta=dict(classes_from=str(root / first)))


SPECS = [
    DatasetSpec("image_folder", None, SPLITS, LAYOUT, "classification", build_image_folder,
                description="your own images, one folder per class", names=("folder",),
                splits_for=_present_splits),
]

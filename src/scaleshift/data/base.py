"""Pieces every dataset family shares: the spec record, the two Dataset classes, small helpers.

* `ImageFiles`  - a list of (image path, label); images are decoded on access. A file that cannot
  be decoded is skipped (the next readable sample is returned), remembered in `.skipped` and
  logged, or raises `ScaleshiftError` when the dataset was built with `strict=True`.
* `Generated`   - items made on demand by a *source* object (`source.image(stream, i)`,
  `source.labels(stream)`): the built-in offline tasks. Labels are known up front (`.targets`).

Both yield `(PIL RGB image or transform(image), int label)` and carry `num_classes`, `classes`
and `targets`, which is what `check_dataset` and the training engine rely on.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset

from ..errors import ScaleshiftError

log = logging.getLogger("scaleshift.data")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm",
                              ".tif", ".tiff", ".gif"})
# What PIL raises for a file that is not a decodable image (truncated, corrupt, wrong type).
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset. `build(root=..., split=..., **options)` returns the Dataset."""
    name: str
    num_classes: int | None          # None: the tree decides (image_folder)
    splits: tuple[str, ...]
    layout: str                      # the exact on-disk layout, shown by `scaleshift datasets`
    group: str                       # natural/specialized/structured, fgvc, classification, ...
    build: Callable[..., Dataset] = field(repr=False, compare=False)
    description: str = ""
    needs_root: bool = True
    names: tuple[str, ...] = ()      # other names that resolve to this spec
    split_aliases: dict = field(default_factory=dict, compare=False)
    # splits a given tree provides (FGVC: VPT json or official protocol); default: `splits`
    splits_for: Callable[[Path | None], tuple[str, ...]] | None = field(default=None,
                                                                        compare=False)

    def resolve_split(self, split: str) -> str:
        split = self.split_aliases.get(split, split)
        if split not in self.splits:
            shown = ", ".join(self.splits) if len(self.splits) <= 8 else \
                ", ".join(self.splits[:8]) + f", ... ({len(self.splits)} in all)"
            raise ScaleshiftError(f"{self.name} has no split {split!r}; splits: {shown}")
        return split

    def check_splits(self, root: Path | None) -> tuple[str, ...]:
        return self.splits_for(root) if self.splits_for else self.splits


def load_rgb(path: str | Path) -> Image.Image:
    """Decode the whole file (so truncated files fail here, not mid-epoch) and return RGB."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def layout_error(what: str, path: Path, layout: str) -> ScaleshiftError:
    return ScaleshiftError(f"{what} not found: {path}\nexpected layout:\n{layout}")


def require(path: Path, layout: str, what: str = "file") -> Path:
    """`path` if it exists, else a ScaleshiftError naming it and the expected layout."""
    path = Path(path)
    if not path.exists():
        raise layout_error(what, path, layout)
    return path


def read_json(path: Path, layout: str):
    require(path, layout)
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScaleshiftError(f"{path} is not valid JSON ({exc})\nexpected layout:\n{layout}")


def read_table(path: Path, layout: str, columns: int) -> list[list[str]]:
    """Whitespace-separated rows of a split/label file; the last column may contain spaces."""
    require(path, layout)
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = line.split(maxsplit=columns - 1)
        if len(row) != columns:
            raise ScaleshiftError(f"{path}:{number}: expected {columns} columns, got {line!r}")
        rows.append(row)
    return rows


def parse_label(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ScaleshiftError(f"{where}: label {text!r} is not an integer") from None


def check_labels(labels: Sequence[int], num_classes: int, where: str) -> None:
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise ScaleshiftError(f"{where}: label {bad[0]} out of range [0, {num_classes}) "
                              f"({len(bad)} labels out of range)")


def natural_key(text: str) -> list:
    """Sort key that orders '2' before '10' (timm's folder order, so the official labels)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


class ImageFiles(Dataset):
    """Image files with integer labels, decoded on access."""

    def __init__(self, samples: list[tuple[Path, int]], num_classes: int,
                 classes: Sequence[str] | None = None, transform=None, strict: bool = False,
                 meta: dict | None = None):
        self.samples = [(Path(path), int(label)) for path, label in samples]
        self.targets = [label for _, label in self.samples]
        self.num_classes = num_classes
        self.classes = list(classes) if classes is not None else None
        self.transform = transform
        self.strict = strict
        self.meta = dict(meta or {})
        self.skipped: dict[str, str] = {}           # path -> reason, filled while reading

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        count = len(self.samples)
        for step in range(count):
            path, label = self.samples[(index + step) % count]
            try:
                image = load_rgb(path)
            except UNREADABLE as exc:
                if self.strict:
                    raise ScaleshiftError(f"unreadable image {path}: {exc}") from exc
                if str(path) not in self.skipped:
                    self.skipped[str(path)] = str(exc)
                    log.warning("skipping unreadable image %s: %s", path, exc)
                continue
            return (self.transform(image) if self.transform else image), label
        raise ScaleshiftError(f"none of the {count} images of this split could be read")


class Generated(Dataset):
    """Items rendered on demand by `source` (built-in tasks). `items` are (stream, index) pairs."""

    def __init__(self, source, items: Sequence[tuple[str, int]], num_classes: int,
                 classes: Sequence[str] | None = None, transform=None, meta: dict | None = None):
        self.source = source
        self.items = [(str(stream), int(i)) for stream, i in items]
        labels = {stream: source.labels(stream) for stream in {s for s, _ in self.items}}
        self.targets = [int(labels[stream][i]) for stream, i in self.items]
        self.num_classes = num_classes
        self.classes = list(classes) if classes is not None else None
        self.transform = transform
        self.meta = dict(meta or {})
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self.items)
        if not 0 <= index < len(self.items):
            raise IndexError(index)
        stream, i = self.items[index]
        image = self.source.image(stream, i)
        return (self.transform(image) if self.transform else image), self.targets[index]

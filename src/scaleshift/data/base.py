"""Pieces every dataset family shares: the spec record, the two Dataset classes, small helpers.

* `ImageFiles`  - a list of (image path, label); images are decoded on access by
  `images.load_rgb` (high bit depths scaled, transparency composited, bombs refused). A file
  that cannot be decoded is skipped (the next readable sample is returned), logged and listed
  in `.skipped` as (path, reason), or raises `ScaleshiftError` when the dataset was built with
  `strict=True`. Skips made in DataLoader worker processes are seen by the parent too (one
  shared byte per sample); `skipped_counts` gives {split: count} for results.json.
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

import torch
from torch.utils.data import Dataset, Subset

from ..errors import ScaleshiftError
from .images import KINDS, UnreadableImage, load_rgb

log = logging.getLogger("scaleshift.data")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm",
                              ".tif", ".tiff", ".gif"})


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
    extras: tuple[str, ...] = ()    # optional modules building it imports (scaleshift.extras)

    def resolve_split(self, split: str) -> str:
        split = self.split_aliases.get(split, split)
        if split not in self.splits:
            shown = ", ".join(self.splits) if len(self.splits) <= 8 else \
                ", ".join(self.splits[:8]) + f", ... ({len(self.splits)} in all)"
            raise ScaleshiftError(f"{self.name} has no split {split!r}; splits: {shown}")
        return split

    def check_splits(self, root: Path | None) -> tuple[str, ...]:
        return self.splits_for(root) if self.splits_for else self.splits


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


def check_labels(labels: Sequence[int], num_classes: int, where: str,
                 entries: Sequence[str] | None = None) -> None:
    """Every label in [0, num_classes); `entries` names each label's line or entry."""
    bad = [i for i, label in enumerate(labels) if not 0 <= label < num_classes]
    if bad:
        entry = f" ({entries[bad[0]]})" if entries is not None else ""
        raise ScaleshiftError(f"{where}{entry}: label {labels[bad[0]]} out of range "
                              f"[0, {num_classes}) ({len(bad)} labels out of range)")


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
        # per sample: 0 = not known bad, else 1 + index of the reason in images.KINDS. In shared
        # memory, so DataLoader workers (forked or spawned) record skips the parent can read.
        self.skip_codes = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()
        self._reasons: dict[int, str] = {}           # full reasons, this process only

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of every sample skipped so far, in sample order. The reason is
        "kind: detail; fix" when this process read the file, just the kind when a DataLoader
        worker did."""
        return [(str(self.samples[i][0]),
                 self._reasons.get(i) or KINDS[int(self.skip_codes[i]) - 1])
                for i in self.skip_codes.nonzero().flatten().tolist()]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        count = len(self.samples)
        for step in range(count):
            i = (index + step) % count
            if self.skip_codes[i]:                   # known bad: not decoded again
                continue
            path, label = self.samples[i]
            try:
                image = load_rgb(path)
            except UnreadableImage as exc:
                if self.strict:
                    raise ScaleshiftError(f"unreadable image {exc} (strict=True; without it "
                                          f"the image is skipped and counted)") from None
                self.skip_codes[i] = exc.code
                self._reasons[i] = exc.reason
                log.warning("skipping unreadable image %s", exc)
                continue
            return (self.transform(image) if self.transform else image), label
        first = self.skipped[0] if self.skipped else ("", "")
        raise ScaleshiftError(f"none of the {count} images of this split could be read (e.g. "
                              f"{first[0]}: {first[1]}); run `scaleshift datasets check` on it")


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
        self.skipped: list[tuple[str, str]] = []     # generated items are never skipped

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


def _skip_codes(dataset) -> torch.Tensor | None:
    """Per-sample skip codes of `dataset` (Subsets unwrapped), None if it reads no files."""
    if isinstance(dataset, Subset):
        inner = _skip_codes(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices),
                                                                dtype=torch.long)]
    return getattr(dataset, "skip_codes", None)


def skipped_counts(splits: dict, world: int = 1, device=None) -> dict[str, int]:
    """{split: number of distinct images skipped so far} for the datasets in `splits` (None
    values left out; a Subset counts its own indices). With world > 1 the codes are merged
    over the processes (all_reduce MAX, on `device`): call it on every rank."""
    counts = {}
    for name, dataset in splits.items():
        if dataset is None:
            continue
        codes = _skip_codes(dataset)
        if codes is None:
            counts[name] = 0
            continue
        if world > 1:
            import torch.distributed as dist
            codes = codes.to(device=device, dtype=torch.int32)
            dist.all_reduce(codes, op=dist.ReduceOp.MAX)
        counts[name] = int((codes > 0).sum())
    return counts

"""FGVC: CUB-200-2011, NABirds, Oxford Flowers, Stanford Dogs, Stanford Cars, in both protocols.

VPT json protocol (splits train / val / test / trainval) - what VPT and most PEFT papers use:
    <root>/train.json, val.json, test.json   {"<image path relative to the image root>": id}
    image root: CUB <root>/images/, NABirds <root>/images/, Dogs <root>/Images/,
                Flowers and Cars <root>/ itself.
    Class ids are mapped to 0..K-1 in sorted order of the ids used in all three files.

Official SSF protocol (splits train / test) - the full official training sets:
    CUB      <root>/images.txt, image_class_labels.txt, train_test_split.txt, images/
             (labels 1..200; <root> may also be the folder holding CUB_200_2011/)
    NABirds  the same three files + images/ (sparse class ids, mapped to 0..554 in sorted
             order; <root> may also be the folder holding nabirds/)
    Dogs     <root>/train_list.mat, test_list.mat (fields file_list, labels 1..120), Images/
    Flowers, Cars  <root>/train/<class>/ and <root>/val/<class>/ class folders (the official
             code evaluates on val/; test/ is accepted when val/ is absent)

`protocol="auto"` (default) picks VPT json when <root>/train.json exists, else official.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from .. import extras
from ..errors import ScaleshiftError
from .base import (DatasetSpec, ImageFiles, layout_error, parse_label, read_json,
                   read_table, require)
from .confine import inside, line_numbers
from .folder import check_class_count, folder_samples, scan_class_folders

VPT_SPLITS = ("train", "val", "test")
SPLITS = ("train", "val", "test", "trainval")
OFFICIAL_SPLITS = ("train", "test")

_VPT = """\
VPT json protocol (splits train, val, test, trainval = train + val):
  <root>/train.json, <root>/val.json, <root>/test.json
      {{"<image path relative to the image root>": <class id>, ...}}
  image root: {image_root}"""

_CUB_FILES = """\
official protocol (splits train, test):
  <root>/images.txt               "<image id> <image path relative to images/>"
  <root>/image_class_labels.txt   "<image id> <class id{range}>"
  <root>/train_test_split.txt     "<image id> <1 = train, 0 = test>"
  <root>/images/<image path>
  (<root> may also be the folder that holds {folder}/)"""

_DOGS = """\
official protocol (splits train, test):
  <root>/train_list.mat, <root>/test_list.mat
      fields file_list (paths relative to Images/) and labels (1..120)
  <root>/Images/<breed folder>/<image>.jpg"""

_FOLDERS = """\
official protocol (splits train, test), as the official SSF code reads it:
  <root>/train/<class folder>/<image>
  <root>/val/<class folder>/<image>    (the test split; test/ is used if val/ is absent)"""

FGVC = {   # name: (title, classes, VPT image root, official layout, other names)
    "cub2011": ("CUB-200-2011", 200, "images",
                _CUB_FILES.format(range=" 1..200", folder="CUB_200_2011"), ("cub200", "cub")),
    "nabirds": ("NABirds", 555, "images",
                _CUB_FILES.format(range=" (sparse ids, 555 distinct)", folder="nabirds"), ()),
    "oxford_flowers": ("Oxford Flowers-102", 102, ".", _FOLDERS, ("flowers102",)),
    "stanford_dogs": ("Stanford Dogs", 120, "Images", _DOGS, ("dogs",)),
    "stanford_cars": ("Stanford Cars", 196, ".", _FOLDERS, ("cars",)),
}
_NESTED = {"cub2011": "CUB_200_2011", "nabirds": "nabirds"}


def layout(name: str) -> str:
    _, _, image_root, official, _ = FGVC[name]
    where = "<root>/" if image_root == "." else f"<root>/{image_root}/"
    return _VPT.format(image_root=where) + "\n" + official


def detect_protocol(root: Path) -> str:
    return "vpt" if (Path(root) / "train.json").exists() else "official"


def _official_root(name: str, root: Path) -> Path:
    nested = _NESTED.get(name)
    if nested and not (root / "images.txt").exists() and (root / nested / "images.txt").exists():
        return root / nested
    return root


# --- VPT json ----------------------------------------------------------------------------

def _vpt_samples(name, root, split, num_classes):
    lay = layout(name)
    image_root = root / FGVC[name][2]
    if not image_root.is_dir():
        raise layout_error("image folder", image_root, lay)
    wanted = ("train", "val") if split == "trainval" else (split,)
    annos = {}
    for s in VPT_SPLITS:
        path = root / f"{s}.json"
        if s in wanted or path.exists():
            anno = read_json(path, lay)
            if not isinstance(anno, dict):
                raise ScaleshiftError(f"{path}: expected a JSON object mapping image path -> "
                                      f"class id\nexpected layout:\n{lay}")
            annos[s] = {key: parse_label(str(value), f"{path} [{key!r}]")
                        for key, value in anno.items()}
    # one id map for every split, from all files present (VPT maps each file on its own,
    # which silently shifts labels when a split lacks a class)
    ids = sorted({v for anno in annos.values() for v in anno.values()})
    if num_classes is not None and len(ids) != num_classes:
        raise ScaleshiftError(f"{root}: {len(ids)} distinct class ids in "
                              f"{', '.join(f'{s}.json' for s in annos)}, expected {num_classes}")
    cont = {v: i for i, v in enumerate(ids)}
    return [(inside(root, rel, f"{root / f'{s}.json'} [{rel!r}]", image_root),
             cont[v]) for s in wanted for rel, v in annos[s].items()], len(ids)


# --- official protocols ------------------------------------------------------------------

def _cub_like_samples(name, root, split, num_classes):
    lay = layout(name)
    root = _official_root(name, root)
    paths = dict(read_table(root / "images.txt", lay, 2))
    lines = dict(zip(paths, line_numbers(root / "images.txt")))
    labels = {i: parse_label(v, f"{root / 'image_class_labels.txt'} (image {i})")
              for i, v in read_table(root / "image_class_labels.txt", lay, 2)}
    is_train = {i: v.strip() == "1" for i, v in read_table(root / "train_test_split.txt", lay, 2)}
    missing = [i for i in paths if i not in labels or i not in is_train]
    if missing:
        raise ScaleshiftError(f"{root}: image id {missing[0]} of images.txt has no label or no "
                              f"train/test flag ({len(missing)} such ids)")
    if name == "cub2011":       # labels are 1..200 as given
        mapped = {i: v - 1 for i, v in labels.items()}
        _check_one_based(labels, num_classes or 200, root / "image_class_labels.txt")
        count = len(set(mapped.values()))
    else:                       # NABirds: sparse ids -> 0..K-1 in sorted order
        ids = sorted(set(labels.values()))
        cont = {v: k for k, v in enumerate(ids)}
        mapped = {i: cont[v] for i, v in labels.items()}
        count = len(ids)
    if num_classes is not None and count != num_classes:
        raise ScaleshiftError(f"{root / 'image_class_labels.txt'}: {count} distinct classes, "
                              f"expected {num_classes}")
    want_train = split == "train"
    samples = [(inside(root, paths[i], f"{root / 'images.txt'}:{lines[i]}", root / "images"), mapped[i])
               for i in paths if is_train[i] == want_train]
    return samples, num_classes or count


def _check_one_based(labels: dict[str, int], classes: int, label_file: Path) -> None:
    """Every label of image_class_labels.txt in 1..classes, else the first other one named
    with its line and image id."""
    bad = [i for i, v in labels.items() if not 1 <= v <= classes]
    if bad:
        line = dict(zip(labels, line_numbers(label_file)))[bad[0]]
        raise ScaleshiftError(f"{label_file}:{line}: image id {bad[0]} has label {labels[bad[0]]}, "
                              f"out of range 1..{classes} ({len(bad)} such lines)")


def _mat_strings(array) -> list[str]:
    """Strings from a MATLAB cell array as scipy loads it (nested object arrays)."""
    out = []
    for item in np.asarray(array, dtype=object).ravel():
        while isinstance(item, np.ndarray):
            item = item.ravel()[0] if item.size else ""
        out.append(str(item))
    return out


def _dogs_samples(name, root, split, num_classes):
    loadmat = extras.require("scipy.io", "Stanford Dogs' .mat split files").loadmat
    lay = layout(name)
    path = require(root / f"{split}_list.mat", lay)
    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises several types for a bad file
        raise ScaleshiftError(f"{path} is not a readable .mat file ({exc})") from exc
    if "file_list" not in mat or "labels" not in mat:
        raise ScaleshiftError(f"{path} lacks the fields file_list / labels\n"
                              f"expected layout:\n{lay}")
    files = _mat_strings(mat["file_list"])
    labels = [int(v) - 1 for v in np.asarray(mat["labels"]).ravel()]
    if len(files) != len(labels):
        raise ScaleshiftError(f"{path}: {len(files)} files but {len(labels)} labels")
    bad = [n for n, y in enumerate(labels) if not 0 <= y < (num_classes or 120)]
    if bad:
        raise ScaleshiftError(f"{path}: entry {bad[0] + 1} ({files[bad[0]]}) has label "
                              f"{labels[bad[0]] + 1}, out of range 1..{num_classes or 120} "
                              f"({len(bad)} such entries)")
    return [(inside(root, f, f"{path} (entry {n})", root / "Images"), y)
            for n, (f, y) in enumerate(zip(files, labels), 1)], num_classes or 120


def _folder_samples(name, root, split, num_classes):
    lay = layout(name)
    train_classes = list(scan_class_folders(root / "train", lay))
    check_class_count(len(train_classes), num_classes, root / "train", lay)
    if split == "train":
        split_dir = root / "train"
    else:
        split_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), root / "val")
    return folder_samples(split_dir, train_classes, lay), len(train_classes)


_OFFICIAL = {"cub2011": _cub_like_samples, "nabirds": _cub_like_samples,
             "stanford_dogs": _dogs_samples, "oxford_flowers": _folder_samples,
             "stanford_cars": _folder_samples}


def build_fgvc(name, root, split="train", *, protocol="auto", num_classes=None, strict=False):
    root = Path(root)
    lay = layout(name)
    if not root.is_dir():
        raise layout_error("dataset root", root, lay)
    if protocol == "auto":
        protocol = detect_protocol(root)
    if protocol not in ("vpt", "official"):
        raise ScaleshiftError(f"protocol must be auto, vpt or official, got {protocol!r}")
    expected = FGVC[name][1] if num_classes is None else num_classes
    if protocol == "vpt":
        samples, k = _vpt_samples(name, root, split, expected)
    else:
        if split not in OFFICIAL_SPLITS:
            raise ScaleshiftError(f"{name}: split {split!r} needs the VPT json layout (the "
                                  f"official protocol has train and test only)\n"
                                  f"expected layout:\n{lay}")
        samples, k = _OFFICIAL[name](name, root, split, expected)
    return ImageFiles(samples, k, strict=strict, meta=dict(protocol=protocol))


def _splits_for(root):
    if root is None or detect_protocol(Path(root)) == "official":
        return OFFICIAL_SPLITS
    return VPT_SPLITS


SPECS = [
    DatasetSpec(name, classes, SPLITS, layout(name), "fgvc", partial(build_fgvc, name),
                description=f"{title} (VPT json or official SSF protocol)", names=names,
                splits_for=_splits_for)
    for name, (title, classes, _, _, names) in FGVC.items()
]

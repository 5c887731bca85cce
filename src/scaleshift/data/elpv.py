"""elpv: electroluminescence images of solar cells (Buerhop-Lutz et al. / Deitsch et al.), a real
specialised-imaging dataset, as two tasks (VTAB specialised group):

elpv_defect_96   defect probability graded by experts, 0 / 0.33 / 0.67 / 1 -> 4 classes
elpv_type_96     cell type: mono- or polycrystalline -> 2 classes

2,624 grayscale 300x300 cells, shown at 96x96 (bicubic, RGB). The data are CC-BY-NC-SA-4.0:
scaleshift never ships or commits them; they come from the PyPI wheel `elpv-dataset`, installed
on demand (`pip install elpv-dataset`), or from a copy of the dataset's repository (`root`
holding labels.csv and images/).

Split: a fixed test set of 1,049 cells (40% of each defect-probability x type stratum, drawn once
with a fixed seed by `make_split` and recorded in elpv_split.json next to this file: the file
names, never the images), the same for both tasks. train800 / val200 are drawn with the seed
from the other 1,575 cells, so test is disjoint from train800val200 for every seed.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ScaleshiftError
from ..extras import missing
from .base import DatasetSpec, Generated
from .builtin import TEST_SEED, HIRES, PROTOCOL_ALIASES, PROTOCOL_SPLITS, PROTOCOL_TEXT, \
    check_num_classes, protocol_items

PACKAGE, MODULE = "elpv-dataset", "elpv_dataset"
INSTALL = f"pip install {PACKAGE}"
SPLIT_FILE = Path(__file__).with_name("elpv_split.json")
TEST_FRACTION = 0.4
TOTAL = 2624
_KEY = 16                            # random-stream key (builtin._KEYS uses 11..15)
TASKS = {
    f"elpv_defect_{HIRES}": ("defect", ("functional (0)", "defect 0.33", "defect 0.67",
                                        "defective (1)")),
    f"elpv_type_{HIRES}": ("type", ("mono", "poly")),
}
LAYOUT = (f"no root: the PyPI wheel ({INSTALL}; data CC-BY-NC-SA-4.0, installed on demand, "
          f"never redistributed)\n--root: a copy of the elpv-dataset repository's data folder: "
          f"<root>/labels.csv (lines 'images/cellNNNN.png <probability> mono|poly') and "
          f"<root>/images/")


def data_dir(root=None) -> Path:
    """The folder holding labels.csv and images/ (the installed wheel's unless `root`)."""
    if root is not None:
        folder = Path(root)
        folder = folder / "data" if not (folder / "labels.csv").is_file() else folder
    else:
        spec = importlib.util.find_spec(MODULE)
        if spec is None or not spec.submodule_search_locations:
            raise missing(MODULE, "the elpv tasks (CC-BY-NC-SA-4.0 solar-cell images from PyPI)",
                          alternative="or pass root=<folder with labels.csv and images/>")
        folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (folder / "labels.csv").is_file():
        raise ScaleshiftError(f"elpv labels.csv not found in {folder}\nexpected layout:\n{LAYOUT}")
    return folder


@lru_cache(maxsize=4)
def read_labels(folder: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, str]:
    """(file names, defect grade 0..3, type 0 mono / 1 poly, sha256 of labels.csv)."""
    path = Path(folder) / "labels.csv"
    text = path.read_bytes()
    names, grades, types = [], [], []
    for number, line in enumerate(text.decode().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or parts[2] not in ("mono", "poly"):
            raise ScaleshiftError(f"{path}:{number}: expected '<image> <probability> mono|poly'")
        grade = float(parts[1]) * 3
        if abs(grade - round(grade)) > 1e-6 or not 0 <= round(grade) <= 3:
            raise ScaleshiftError(f"{path}:{number}: probability {parts[1]} is not 0, 1/3, 2/3 "
                                  f"or 1")
        names.append(Path(parts[0]).name)
        grades.append(int(round(grade)))
        types.append(("mono", "poly").index(parts[2]))
    if len(names) != TOTAL or len(set(names)) != TOTAL:
        raise ScaleshiftError(f"{path} lists {len(names)} cells ({len(set(names))} distinct), "
                              f"not the {TOTAL} of elpv-dataset")
    return (tuple(names), np.array(grades, np.int64), np.array(types, np.int64),
            hashlib.sha256(text).hexdigest())


def make_split(names, grades, types) -> list[str]:
    """The fixed test set: TEST_FRACTION of each (grade, type) stratum, a fixed seeded draw."""
    test = []
    for grade in range(4):
        for kind in range(2):
            members = np.flatnonzero((grades == grade) & (types == kind))
            order = np.random.default_rng([TEST_SEED, _KEY, grade, kind]).permutation(members)
            test += [names[i] for i in order[:int(round(TEST_FRACTION * len(members)))]]
    return sorted(test)


@lru_cache(maxsize=1)
def recorded_split() -> dict:
    return json.loads(SPLIT_FILE.read_text())


class ElpvSource:
    def __init__(self, folder: Path, target: str, seed: int, size: int):
        names, grades, types, digest = read_labels(str(folder))
        split = recorded_split()
        if digest != split["labels_sha256"]:
            raise ScaleshiftError(f"{folder}/labels.csv (sha256 {digest[:12]}...) is not the "
                                  f"version the recorded split was drawn from "
                                  f"({split['labels_sha256'][:12]}...; {PACKAGE} "
                                  f"{split['package_version']})")
        test = set(split["test"])
        test_idx = np.array([i for i, n in enumerate(names) if n in test])
        pool = np.array([i for i, n in enumerate(names) if n not in test])
        train = pool[np.random.default_rng([seed, _KEY]).permutation(len(pool))]
        labels = grades if target == "defect" else types
        self.folder, self.names, self.size, self.labels_all = folder, names, size, labels
        self.order = dict(train=train, test=test_idx)
        self.sizes = dict(train=len(train), test=len(test_idx))

    def labels(self, stream: str) -> np.ndarray:
        return self.labels_all[self.order[stream]]

    def image(self, stream: str, i: int) -> Image.Image:
        path = self.folder / "images" / self.names[self.order[stream][i]]
        with Image.open(path) as img:
            img = img.convert("L")
            if img.size != (self.size, self.size):
                img = img.resize((self.size, self.size), Image.BICUBIC)
            return img.convert("RGB")


def build_elpv(task, root=None, split="train", *, seed=0, num_classes=None, strict=False,
               size=HIRES):
    target, classes = TASKS[task]
    check_num_classes(task, num_classes, len(classes))
    folder = data_dir(root)
    source = ElpvSource(folder, target, seed, size)
    split_record = recorded_split()
    return Generated(source, protocol_items(split, source.sizes), len(classes), classes,
                     meta=dict(files=str(folder), labels_sha256=split_record["labels_sha256"],
                               test_split=str(SPLIT_FILE.name), size=size,
                               licence="CC-BY-NC-SA-4.0 (installed on demand, not shipped)"))


_WHAT = {"defect": "solar-cell defect probability (4 grades)",
         "type": "solar-cell type (mono / poly)"}

SPECS = [
    DatasetSpec(task, len(classes), PROTOCOL_SPLITS,
                LAYOUT + f"\n2,624 300x300 EL images shown at {HIRES}x{HIRES}; fixed "
                f"stratified test set of 1,049 (elpv_split.json)\n" + PROTOCOL_TEXT,
                "builtin", partial(build_elpv, task), needs_root=False,
                description=f"elpv {_WHAT[target]} at {HIRES} px ({INSTALL})",
                split_aliases=PROTOCOL_ALIASES, extras=(MODULE,))
    for task, (target, classes) in TASKS.items()
]

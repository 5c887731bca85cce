"""VTAB-1k: the 19 tasks in the NOAH export layout, with their groups and class counts.

    vtab-1k/<task>/train800.txt         800 lines "images/<split>/000123.jpg <label>"
    vtab-1k/<task>/val200.txt           200 lines
    vtab-1k/<task>/train800val200.txt   1000 lines (train800 + val200)
    vtab-1k/<task>/test.txt             the full test set
    vtab-1k/<task>/images/...           paths in the lists are relative to vtab-1k/<task>/

`--root` may be vtab-1k/<task> or vtab-1k itself. Split aliases: train = train800val200 (the
final training set of the protocol), val = val200. Clean protocol: select on train800 -> val200,
then retrain on train800val200 and report test.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ..errors import ScaleshiftError
from .confine import inside, line_numbers
from .base import DatasetSpec, ImageFiles, check_labels, layout_error, parse_label, read_table

SPLITS = ("train800", "val200", "train800val200", "test")
SPLIT_ALIASES = {"train": "train800val200", "val": "val200"}

VTAB_TASKS = {   # task (NOAH folder name): (group, classes)
    "cifar": ("natural", 100), "caltech101": ("natural", 102), "dtd": ("natural", 47),
    "oxford_flowers102": ("natural", 102), "oxford_iiit_pet": ("natural", 37),
    "svhn": ("natural", 10), "sun397": ("natural", 397),
    "patch_camelyon": ("specialized", 2), "eurosat": ("specialized", 10),
    "resisc45": ("specialized", 45), "diabetic_retinopathy": ("specialized", 5),
    "clevr_count": ("structured", 8), "clevr_dist": ("structured", 6),
    "dmlab": ("structured", 6), "kitti": ("structured", 4), "dsprites_loc": ("structured", 16),
    "dsprites_ori": ("structured", 16), "smallnorb_azi": ("structured", 18),
    "smallnorb_ele": ("structured", 9),
}
GROUPS = ("natural", "specialized", "structured")


def layout(task: str) -> str:
    return f"""\
NOAH VTAB-1k export (--root vtab-1k/{task} or vtab-1k):
  vtab-1k/{task}/train800.txt, val200.txt, train800val200.txt, test.txt
      one line per image: "images/<split>/000123.jpg <label 0..{VTAB_TASKS[task][1] - 1}>"
  vtab-1k/{task}/images/...   (paths in the lists are relative to vtab-1k/{task}/)"""


def task_dir(task: str, root: Path) -> Path:
    root = Path(root)
    if (root / "train800.txt").exists() or not (root / task).is_dir():
        return root
    return root / task


def build_vtab(task, root, split="train800val200", *, num_classes=None, strict=False):
    lay = layout(task)
    folder = task_dir(task, root)
    if not folder.is_dir():
        raise layout_error("task folder", folder, lay)
    num_classes = VTAB_TASKS[task][1] if num_classes is None else num_classes
    list_file = folder / f"{split}.txt"
    rows = read_table(list_file, lay, 2)
    lines = [f"{list_file}:{n}" for n in line_numbers(list_file)]
    labels = [parse_label(label, f"{line} ({path})") for (path, label), line in zip(rows, lines)]
    check_labels(labels, num_classes, str(list_file), [f"line {n.rsplit(':', 1)[1]}: {path}"
                                                        for (path, _), n in zip(rows, lines)])
    samples = [(inside(folder, path, line), label)
               for (path, _), label, line in zip(rows, labels, lines)]
    return ImageFiles(samples, num_classes, strict=strict, meta=dict(group=VTAB_TASKS[task][0]))


def vtab_means(accuracy: dict[str, float], allow_partial: bool = False) -> dict:
    """19-task mean and group means (natural / specialized / structured) of per-task accuracy.

    Keys may be task names or registry names (`vtab_dtd`). `group_mean` is the mean of the
    three group means (what some later papers report instead of the 19-task mean)."""
    acc = {name.removeprefix("vtab_"): float(v) for name, v in accuracy.items()}
    unknown = sorted(set(acc) - set(VTAB_TASKS))
    if unknown:
        raise ScaleshiftError(f"unknown VTAB task {unknown[0]!r}; tasks: {', '.join(VTAB_TASKS)}")
    missing = [t for t in VTAB_TASKS if t not in acc]
    if missing and not allow_partial:
        raise ScaleshiftError(f"{len(missing)} of 19 VTAB tasks missing (e.g. {missing[0]})")
    out = dict(tasks=len(acc), mean=sum(acc.values()) / len(acc) if acc else float("nan"))
    for group in GROUPS:
        values = [v for t, v in acc.items() if VTAB_TASKS[t][0] == group]
        out[group] = sum(values) / len(values) if values else float("nan")
    out["group_mean"] = sum(out[g] for g in GROUPS) / len(GROUPS)
    return out


SPECS = [
    DatasetSpec(f"vtab_{task}", classes, SPLITS, layout(task), group,
                partial(build_vtab, task), description=f"VTAB-1k {task} ({group})",
                split_aliases=SPLIT_ALIASES)
    for task, (group, classes) in VTAB_TASKS.items()
]

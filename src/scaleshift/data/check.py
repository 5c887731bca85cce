"""Validate a dataset tree before a long run: `scaleshift datasets check NAME --root PATH`.

Builds every split the tree should provide, decodes every image file and returns a report:

    {"dataset", "root", "options", "meta", "classes", "expected_classes",
     "splits": {split: {"images": readable, "files": listed, "classes": distinct labels,
                        "skipped": unreadable}},
     "skipped": [{"split", "path", "kind", "reason"}, ...],
     "skipped_by_reason": {split: {kind: count}}, "ok": true}

Every image is decoded by `images.load_rgb`, the decoder the datasets use, so what is reported
readable is what training reads. Unreadable images are skipped, counted by kind ("not found",
"decompression bomb", "corrupt or truncated", "unsupported pixel format", ...) and listed with
the reason and fix (strict=True raises instead).
Errors (ScaleshiftError): a missing root or split file (the message names the path and the
expected layout), a label out of range, a class count other than expected, a class with no
readable image in any split (not checked when `splits` picks a subset, as VTAB's train800
need not hold every class), or a training split sharing an image file with the held-out split.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ScaleshiftError
from ..progress import progress
from .base import ImageFiles
from .images import KINDS, UnreadableImage, load_rgb
from .registry import build_dataset, get_dataset_spec


def _held_out(splits) -> str | None:
    return "test" if "test" in splits else ("val" if "val" in splits else None)


def check_dataset(name: str, root=None, strict: bool = False, splits=None, decode: bool = True,
                  **options) -> dict:
    """Report on `name` at `root` (see the module doc). `splits` restricts the splits checked;
    `decode=False` only checks that the files exist; `options` go to the dataset builder
    (e.g. num_classes=3 for a partial tree, protocol="official", seed=1)."""
    spec = get_dataset_spec(name)
    root_path = Path(root) if root is not None else None
    if spec.needs_root and root_path is None:
        raise ScaleshiftError(f"{spec.name} needs --root; expected layout:\n{spec.layout}")
    if root_path is not None and not root_path.exists():   # given and wrong: never ignored
        raise ScaleshiftError(f"dataset root not found: {root_path}\n"
                              f"expected layout:\n{spec.layout}")
    restricted = bool(splits)
    splits = [spec.resolve_split(s) for s in (splits or spec.check_splits(root_path))]
    report = dict(dataset=spec.name, root=str(root_path) if root_path else None,
                  options={k: v for k, v in options.items()}, meta={}, splits={}, skipped=[],
                  skipped_by_reason={})
    seen: set[int] = set()
    files: dict[str, set[str]] = {}
    num_classes = None
    unreadable_by_label: dict[int, list[str]] = {}
    class_names = None
    for split in splits:
        dataset = build_dataset(spec.name, root, split, strict=strict, **options)
        num_classes = dataset.num_classes
        class_names = getattr(dataset, "classes", None) or class_names
        report["meta"].update(getattr(dataset, "meta", {}) or {})
        if isinstance(dataset, ImageFiles):                   # image files on disk
            labels, skipped, kinds = [], 0, {}
            for path, label in progress(dataset.samples, f"checking {split}"):
                problem = _unreadable(path, decode)
                if problem is None:
                    labels.append(label)
                    continue
                if strict:
                    raise ScaleshiftError(f"unreadable image {problem}")
                skipped += 1
                unreadable_by_label.setdefault(label, []).append(str(path))
                kinds[problem.kind] = kinds.get(problem.kind, 0) + 1
                report["skipped"].append(dict(split=split, path=str(path), kind=problem.kind,
                                              reason=problem.reason))
            report["skipped_by_reason"][split] = _by_count(kinds)
            files[split] = {str(Path(path).resolve()) for path, _ in dataset.samples}
            listed = len(dataset.samples)
        else:                                                 # in memory or generated
            labels, skipped, listed = [int(t) for t in dataset.targets], 0, len(dataset)
            report["skipped_by_reason"][split] = {}
            if listed:
                dataset[0]                                    # renders / decodes one item
        bad = [label for label in labels if not 0 <= label < num_classes]
        if bad:
            raise ScaleshiftError(f"{spec.name} {split}: label {bad[0]} out of range "
                                  f"[0, {num_classes})")
        seen.update(labels)
        report["splits"][split] = dict(images=len(labels), files=listed,
                                       classes=len(set(labels)), skipped=skipped)
    expected = options.get("num_classes") or spec.num_classes or num_classes
    report["classes"], report["expected_classes"] = len(seen), expected
    if len(seen) != expected and not (restricted and len(seen) < expected):
        raise ScaleshiftError(f"{spec.name}: {len(seen)} classes have readable images across "
                              f"splits {', '.join(splits)}; expected {expected}"
                              + _missing(expected, seen, class_names, unreadable_by_label))
    held_out = _held_out(files)
    for split in files:
        if held_out and split != held_out and split.startswith("train"):
            shared = files[split] & files[held_out]
            if shared:
                raise ScaleshiftError(f"{spec.name}: {len(shared)} images are in both {split} "
                                      f"and {held_out}, e.g. {sorted(shared)[0]}")
    report["ok"] = True
    return report


def _missing(expected: int, seen: set[int], names, unreadable: dict[int, list[str]]) -> str:
    """Which classes have no readable image, and a few of their unreadable files."""
    missing = sorted(set(range(expected)) - seen)
    if not missing:
        return ""
    def name(label):
        return str(names[label]) if names is not None and label < len(names) else str(label)
    files = [f for label in missing for f in unreadable.get(label, [])]
    shown = ", ".join(name(label) for label in missing[:10]) + (" ..." if len(missing) > 10 else "")
    text = f"; no readable image in class{'es' if len(missing) > 1 else ''} {shown}"
    if files:
        text += f" (unreadable: {', '.join(files[:3])}{' ...' if len(files) > 3 else ''})"
    return text


def _unreadable(path: Path, decode: bool) -> UnreadableImage | None:
    """None when the image is fine, else what is wrong with it."""
    if not decode:
        if Path(path).is_file():
            return None
        return UnreadableImage(f"{path}: not found", "not found", "no such file",
                               "restore the file, or remove it from the split")
    try:
        load_rgb(path)
    except UnreadableImage as exc:
        return exc
    return None


def _by_count(kinds: dict[str, int]) -> dict[str, int]:
    """Most frequent first, ties in the order of images.KINDS."""
    return dict(sorted(kinds.items(), key=lambda kv: (-kv[1], KINDS.index(kv[0]))))


def format_report(report: dict) -> str:
    """The human-readable form printed by `scaleshift datasets check`."""
    lines = [f"dataset   {report['dataset']}", f"root      {report['root']}"]
    if report["meta"]:
        lines.append("info      " + ", ".join(f"{k}={v}" for k, v in report["meta"].items()))
    lines.append(f"classes   {report['classes']} (expected {report['expected_classes']})")
    lines.append(f"{'split':24} {'images':>8} {'classes':>8} {'skipped':>8}")
    for split, row in report["splits"].items():
        lines.append(f"{split:24} {row['images']:>8} {row['classes']:>8} {row['skipped']:>8}")
    skipped = report["skipped"]
    totals: dict[str, int] = {}
    for kinds in report.get("skipped_by_reason", {}).values():
        for kind, count in kinds.items():
            totals[kind] = totals.get(kind, 0) + count
    by_reason = (" (" + ", ".join(f"{n} {kind}" for kind, n in _by_count(totals).items()) + ")"
                 if totals else "")
    lines.append(f"skipped   {len(skipped)} unreadable file{'s' if len(skipped) != 1 else ''}"
                 + by_reason)
    for item in skipped:
        lines.append(f"  [{item['split']}] {item['path']}: {item['reason']}")
    lines.append("OK" if report["ok"] else "FAILED")
    return "\n".join(lines)

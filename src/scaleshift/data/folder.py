"""Class-folder trees: the generic `image_folder` dataset for users' own data, and the folder
scanner the ImageNet and official Flowers / Cars loaders share.

    <root>/train/<class name>/<image>      any depth below the class folder
    <root>/val/<class name>/<image>        optional
    <root>/test/<class name>/<image>       optional

Classes are the class folders of the first split present (train, else val, else test), in
natural order ('2' before '10', as timm orders them); every other split must use a subset of
those names, so a label means the same class in every split.

Walking a class folder follows symbolic links, but every real file counts once: files are
deduplicated by their resolved path (the path not reached through a link is kept), a link to a
folder already walked, or to one that contains the class folder (a loop such as `loop -> ..`), is
not followed (logged), and the images stay in natural order of their paths. A file reached from
two class folders, a class folder that links to the split folder, a class folder with no images
and a folder that cannot be listed are errors naming the folder.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import ScaleshiftError
from .base import IMAGE_EXTENSIONS, DatasetSpec, ImageFiles, layout_error, natural_key

log = logging.getLogger("scaleshift.data")

LAYOUT = """\
<root>/train/<class name>/<image>   (.jpg .jpeg .png .bmp .webp .tif ...; any depth)
<root>/val/<class name>/<image>     (optional)
<root>/test/<class name>/<image>    (optional)
classes = class folders of the first split present, natural order ('2' before '10')"""
SPLITS = ("train", "val", "test")


def _contains(outer: str, inner: str) -> bool:
    """True if real path `inner` is `outer` or lies below it."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _list(directory: str) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as exc:
        raise ScaleshiftError(f"cannot list {directory} ({exc.strerror or exc}); make it "
                              f"readable or remove it") from None


def _walk_class(folder: Path, real_root: str, split_real: str
                ) -> tuple[dict[str, Path], list[str]]:
    """{real path: path as reached} of the image files below `folder` in natural order of the
    paths, and the names of its other files.

    Real folders are walked first, links to folders after them in natural order, so a file
    reached both directly and through a link keeps its direct path; a linked folder already
    walked, or one containing `folder` or the split folder (a loop), is not followed."""
    # plain strings per file (few tracked objects: the garbage collector stays idle on big trees)
    found: dict[str, str] = {}                          # real path -> path as reached
    through_link: set[str] = set()                      # real paths whose kept path is a link
    folders: dict[str, Path] = {}                       # folder as reached -> its Path
    others: list[str] = []
    visited = {real_root}
    pending: list[tuple[str, str, bool]] = [(str(folder), real_root, False)]
    links: list[str] = []
    extensions, join, splitext = IMAGE_EXTENSIONS, os.path.join, os.path.splitext
    while pending or links:
        if not pending:
            links.sort(key=natural_key)
            link = links.pop(0)
            real = os.path.realpath(link)
            if _contains(real, real_root) or _contains(real, split_real):
                log.warning("not following %s -> %s: it contains %s (a loop)", link, real,
                            folder if _contains(real, real_root) else folder.parent)
            elif real not in visited:                   # else: that folder was walked already
                visited.add(real)
                pending.append((link, real, True))
            continue
        directory, real_dir, via_link = pending.pop()
        folders[directory] = Path(directory)
        for entry in _list(directory):
            name = entry.name
            if name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()                 # follows links
            except OSError as exc:                      # a link that leads back to itself (ELOOP)
                log.warning("skipping %s: %s", entry.path, exc.strerror or exc)
                continue
            if is_dir:
                if entry.is_symlink():
                    links.append(entry.path)
                elif join(real_dir, name) not in visited:
                    visited.add(join(real_dir, name))
                    pending.append((entry.path, join(real_dir, name), via_link))
                continue
            if splitext(name)[1].lower() not in extensions:
                others.append(name)
                continue
            linked = entry.is_symlink()
            real = os.path.realpath(entry.path) if linked else join(real_dir, name)
            linked = linked or via_link
            if real in found:                           # reached twice: keep one path,
                kept = (real in through_link, natural_key(found[real]))   # direct first
                if (linked, natural_key(entry.path)) >= kept:
                    continue
            found[real] = entry.path
            (through_link.add if linked else through_link.discard)(real)
    ordered = sorted(found, key=lambda real: natural_key(found[real]))
    return ({real: folders[os.path.dirname(found[real])] / os.path.basename(found[real])
             for real in ordered}, sorted(others))


def scan_class_folders(split_dir: Path, layout: str) -> dict[str, list[Path]]:
    """{class folder name: image paths below it, natural order}, classes in natural order."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise layout_error("folder", split_dir, layout)
    entries = sorted(split_dir.iterdir(), key=lambda p: natural_key(p.name))
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        raise ScaleshiftError(f"{len(loose)} images lie directly in {split_dir} (e.g. "
                              f"{loose[0].name}); put each image in a folder named after its "
                              f"class\nexpected layout:\n{layout}")
    split_real = os.path.realpath(split_dir)
    found: dict[str, dict[str, Path]] = {}              # class -> {real file: path}
    owner: dict[str, str] = {}                          # real file -> class
    for folder in entries:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        real_root = os.path.realpath(folder)
        if _contains(real_root, split_real):
            raise ScaleshiftError(f"class folder {folder} is a link to {real_root}, which holds "
                                  f"the class folders themselves (a loop); remove the link")
        files, others = _walk_class(folder, real_root, split_real)
        if not files:
            extra = (f" (it holds {len(others)} other file{'s' if len(others) != 1 else ''}, "
                     f"e.g. {others[0]}; images end in "
                     f"{' '.join(sorted(IMAGE_EXTENSIONS))})") if others else ""
            raise ScaleshiftError(f"class folder {folder} holds no images{extra}; put the "
                                  f"class's images in it or delete the folder (an empty class "
                                  f"folder still takes a label)\nexpected layout:\n{layout}")
        for real in files:
            if owner.setdefault(real, folder.name) != folder.name:
                name = owner[real]
                raise ScaleshiftError(f"image {real} is reached from two class folders: "
                                      f"{found[name][real]} (class {name}) and {files[real]} "
                                      f"(class {folder.name}); an image has one label: remove "
                                      f"one of the links")
        found[folder.name] = files
    classes = {name: list(files.values()) for name, files in found.items()}
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

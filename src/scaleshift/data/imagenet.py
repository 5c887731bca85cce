"""ImageNet-1K class folders, and the 200-class robustness sets ImageNet-A and ImageNet-R.

    ImageNet-1K   <root>/train/<wnid>/<image>, <root>/val/<wnid>/<image>   (1000 wnid folders)
    ImageNet-A    <root>/<wnid>/<image>   200 wnid folders (as the imagenet-a tarball unpacks)
    ImageNet-R    <root>/<wnid>/<image>   200 wnid folders (as the imagenet-r tarball unpacks)

Labels are positions in the sorted 1000 ImageNet wnids (ImageNet-1K) or in the sorted 200 wnids
of the subset (A / R), looked up by folder name, so a missing folder never shifts labels.
An A/R model keeps its 1000-way head: slice the logits to the subset before the argmax,

    mask = imagenet_r_mask()                  # LongTensor of 200 indices into the 1000 classes
    pred = logits[:, mask].argmax(-1)         # compare with the dataset's 0..199 labels

The wnid lists are the published ones (shipped with timm in timm/data/_info); passing `root`
also derives the mask from the folders of your copy and checks that it matches.
"""
from __future__ import annotations

from functools import lru_cache, partial
from importlib import resources
from pathlib import Path

import torch

from ..errors import ScaleshiftError
from .base import DatasetSpec, ImageFiles, layout_error
from .folder import scan_class_folders

LAYOUT_1K = """\
<root>/train/<wnid>/<image>   1000 folders named by WordNet id (n01440764, ...)
<root>/val/<wnid>/<image>     the 50,000 validation images moved into the same 1000 folders"""
LAYOUT_SUBSET = """\
<root>/<wnid>/<image>   {n} folders named by WordNet id, as the {name} tarball unpacks
                        (<root> may also be the folder that holds {folder}/)"""


@lru_cache(maxsize=None)
def _wnid_list(filename: str) -> tuple[str, ...]:
    text = resources.files("timm.data").joinpath("_info", filename).read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1K wnids in sorted order (= class index order of ImageFolder)."""
    wnids = _wnid_list("imagenet_synsets.txt")
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    return wnids


def imagenet_a_wnids() -> tuple[str, ...]:
    return tuple(sorted(_wnid_list("imagenet_a_synsets.txt")))


def imagenet_r_wnids() -> tuple[str, ...]:
    return tuple(sorted(_wnid_list("imagenet_r_synsets.txt")))


def subset_mask(wnids) -> torch.Tensor:
    """Indices (into the 1000 sorted ImageNet classes) of `wnids`, in sorted wnid order."""
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = [w for w in wnids if w not in index]
    if unknown:
        raise ScaleshiftError(f"{unknown[0]} is not an ImageNet-1K wnid ({len(unknown)} unknown)")
    return torch.tensor([index[w] for w in sorted(wnids)], dtype=torch.long)


def _mask(name: str, published: tuple[str, ...], root) -> torch.Tensor:
    mask = subset_mask(published)
    if root is not None:
        folders = sorted(p.name for p in _subset_root(name, Path(root)).iterdir()
                         if p.is_dir() and not p.name.startswith("."))
        missing = sorted(set(published) - set(folders))
        extra = sorted(set(folders) - set(published))
        if missing or extra:
            raise ScaleshiftError(f"{root}: class folders differ from the published {name} "
                                  f"list ({len(missing)} missing e.g. {missing[:1]}, "
                                  f"{len(extra)} extra e.g. {extra[:1]})")
        derived = subset_mask(folders)
        if not torch.equal(derived, mask):      # cannot differ once the sets agree; belt+braces
            raise ScaleshiftError(f"{root}: derived {name} mask differs from the published one")
    return mask


def imagenet_a_mask(root=None) -> torch.Tensor:
    """200 indices into the 1000 ImageNet classes for ImageNet-A (checked against `root`)."""
    return _mask("imagenet-a", imagenet_a_wnids(), root)


def imagenet_r_mask(root=None) -> torch.Tensor:
    """200 indices into the 1000 ImageNet classes for ImageNet-R (checked against `root`)."""
    return _mask("imagenet-r", imagenet_r_wnids(), root)


def subset_predictions(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Argmax over the subset's classes only: 1000-way logits -> labels 0..len(mask)-1."""
    return logits[..., mask.to(logits.device)].argmax(-1)


def wnid_samples(split_dir: Path, wnids: tuple[str, ...], expected: int | None, layout: str):
    """Samples of a wnid-folder tree labelled by position in `wnids`; count checked."""
    found = scan_class_folders(split_dir, layout)
    index = {w: i for i, w in enumerate(wnids)}
    unknown = [name for name in found if name not in index]
    if unknown:
        raise ScaleshiftError(f"{split_dir / unknown[0]}: not a class of this dataset "
                              f"({len(unknown)} unknown folders)\nexpected layout:\n{layout}")
    if expected is not None and len(found) != expected:
        raise ScaleshiftError(f"{split_dir} has {len(found)} class folders, expected {expected}"
                              f"\nexpected layout:\n{layout}")
    return [(path, index[name]) for name, paths in found.items() for path in paths]


def build_imagenet(root, split="train", *, num_classes=None, strict=False):
    root = Path(root)
    if not root.is_dir():
        raise layout_error("dataset root", root, LAYOUT_1K)
    expected = 1000 if num_classes is None else num_classes
    samples = wnid_samples(root / split, imagenet_wnids(), expected, LAYOUT_1K)
    return ImageFiles(samples, 1000, imagenet_wnids(), strict=strict)


_SUBSETS = {"imagenet_a": ("imagenet-a", imagenet_a_wnids),
            "imagenet_r": ("imagenet-r", imagenet_r_wnids)}


def _subset_root(folder: str, root: Path) -> Path:
    if not root.is_dir():
        raise layout_error("dataset root", root,
                           LAYOUT_SUBSET.format(n=200, name=folder, folder=folder))
    return root / folder if (root / folder).is_dir() else root


def build_subset(name, root, split="test", *, num_classes=None, strict=False):
    folder, wnids = _SUBSETS[name]
    layout = LAYOUT_SUBSET.format(n=200, name=folder, folder=folder)
    samples = wnid_samples(_subset_root(folder, Path(root)), wnids(),
                           200 if num_classes is None else num_classes, layout)
    return ImageFiles(samples, 200, wnids(), strict=strict,
                      meta=dict(mask=f"{name}_mask() - slice 1000-way logits before argmax"))


SPECS = [
    DatasetSpec("imagenet", 1000, ("train", "val"), LAYOUT_1K, "classification",
                build_imagenet, description="ImageNet-1K (ILSVRC-2012) class folders",
                names=("imagenet1k", "imagenet_1k"), split_aliases={"test": "val"}),
    DatasetSpec("imagenet_a", 200, ("test",), LAYOUT_SUBSET.format(
        n=200, name="imagenet-a", folder="imagenet-a"), "robustness",
        partial(build_subset, "imagenet_a"),
        description="ImageNet-A, 200 classes; evaluate with imagenet_a_mask()",
        split_aliases={"val": "test"}),
    DatasetSpec("imagenet_r", 200, ("test",), LAYOUT_SUBSET.format(
        n=200, name="imagenet-r", folder="imagenet-r"), "robustness",
        partial(build_subset, "imagenet_r"),
        description="ImageNet-R, 200 classes; evaluate with imagenet_r_mask()",
        split_aliases={"val": "test"}),
]

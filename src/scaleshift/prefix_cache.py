"""Cached-prefix training: train the last blocks of a ViT on the frozen prefix's output, computed once.

With SSF only in the last k blocks (`method_options.layers=last:k`) every trainable parameter
sits after block L-k. When the training transform is deterministic (VTAB's resize, no mixup,
cutmix or random erasing) and nothing in the frozen prefix is random in training (dropout,
drop path, patch dropout, BatchNorm batch statistics), block L-k sees the same input for an
image in every epoch. The engine then runs the prefix (patch embedding, position embedding,
blocks 0..L-k-1) once per split, keeps its output (in memory up to `cache_prefix_mb`, past it
in files under out_dir/prefix_cache/, read back through mmap and removed when the run ends)
and trains `Suffix`: blocks L-k..L-1, the final norm and the head, forward and backward. The
model and its merge are unchanged; only where each epoch starts differs.

Implemented for timm's VisionTransformer (ViT, DeiT, DINOv2), whose forward is a plain
sequence of blocks between the embedding and the head.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import DropPath, PatchDropout
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import ScaleshiftError
from .progress import progress

CACHE_DIR = "prefix_cache"
# what a ViT runs after its blocks (forward_features' final norm, then forward_head)
AFTER_BLOCKS = ("norm", "fc_norm", "attn_pool", "head_drop", "head")


def _random_in_training(module: nn.Module) -> bool:
    """Whether `module` computes something else in train mode than in eval mode."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, DropPath):
        return module.drop_prob > 0
    if isinstance(module, PatchDropout):
        return module.prob > 0
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def prefix_cut(model: nn.Module) -> int:
    """The first block holding a trainable parameter (the number of blocks when none does): the
    blocks before it are the cached prefix. Raises ScaleshiftError naming what makes a cache
    wrong: another architecture, a trainable parameter before the cut, a random prefix."""
    if type(model).forward_features is not VisionTransformer.forward_features \
            or not isinstance(model, VisionTransformer):
        raise ScaleshiftError(f"the prefix cache is implemented for timm's VisionTransformer "
                              f"(ViT, DeiT, DINOv2), not {type(model).__name__}; set "
                              f"cache_prefix=false to train on images")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    cut = min((int(name.split(".")[1]) for name in trainable if name.startswith("blocks.")),
              default=len(model.blocks))
    before = [n for n in trainable if not n.startswith("blocks.") and n.split(".")[0] not in AFTER_BLOCKS]
    if before:
        raise ScaleshiftError(f"{before[0]} trains before block {cut}, so the prefix changes "
                              f"during training and cannot be cached; train only the last "
                              f"blocks (method_options.layers=last:k) or set cache_prefix=false")
    prefix = [("patch_embed", model.patch_embed), ("pos_drop", model.pos_drop),
              ("patch_drop", model.patch_drop), ("norm_pre", model.norm_pre),
              *((f"blocks.{i}", model.blocks[i]) for i in range(cut))]
    for owner, part in prefix:
        for name, module in part.named_modules():
            if _random_in_training(module):
                where = f"{owner}.{name}" if name else owner
                raise ScaleshiftError(f"{where} ({type(module).__name__}) is random in training, "
                                      f"so the prefix's output differs every epoch and cannot be "
                                      f"cached; set drop_path=0 (and no dropout before block "
                                      f"{cut}) or cache_prefix=false")
    return cut


def prefix_forward(model: VisionTransformer, images: torch.Tensor, cut: int) -> torch.Tensor:
    """VisionTransformer.forward_features up to (not including) block `cut`."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    return model.blocks[:cut](x)


class Suffix(nn.Module):
    """The rest of `model` from block `cut` on: suffix(prefix_forward(model, x, cut)) equals
    model(x). What trains (and is evaluated) on the cached prefix; its parameters are the
    model's own."""

    def __init__(self, model: VisionTransformer, cut: int):
        super().__init__()
        self.model, self.cut = model, cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        return model.forward_head(model.norm(model.blocks[self.cut:](x)))


class CacheBudget:
    """Memory for cached splits: up to `limit_mb` in RAM, the rest in files under `directory`
    (one per split and process: `rank`), which `remove_files` deletes."""

    def __init__(self, limit_mb: float, directory: Path, rank: int = 0):
        self.left = limit_mb * 2**20
        self.directory, self.rank = directory, rank
        self.files: list[Path] = []

    def allocate(self, shape: tuple, dtype: torch.dtype, name: str) -> tuple[torch.Tensor, str]:
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        if nbytes <= self.left:
            self.left -= nbytes
            return torch.empty(shape, dtype=dtype), "memory"
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.rank{self.rank}.bin"
        path.unlink(missing_ok=True)   # a killed run's file: recomputed
        self.files.append(path)
        tensor = torch.from_file(str(path), shared=True, size=torch.Size(shape).numel(), dtype=dtype)
        return tensor.view(shape), str(path)

    def remove_files(self) -> None:
        """Delete the files this budget created (and their folder, when nothing else is in it)."""
        for path in self.files:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()
        self.files = []


@torch.no_grad()
def cache_prefix(model: VisionTransformer, dataset: Dataset, cut: int, batch: int, device,
                 autocast, budget: CacheBudget, name: str, workers: int = 0
                 ) -> tuple[TensorDataset, dict]:
    """(the prefix's output for every sample with its label, what was stored where). Run in
    eval mode, which equals train mode here (prefix_cut refuses a prefix that is random in
    training)."""
    model.eval()
    stored = where = None
    labels, start = [], 0
    for images, targets in progress(DataLoader(dataset, batch_size=batch, shuffle=False,
                                               num_workers=workers), f"caching {name} (blocks 0-{cut - 1})"):
        with autocast():
            out = prefix_forward(model, images.to(device), cut)
        if stored is None:
            stored, where = budget.allocate((len(dataset), *out.shape[1:]), out.dtype, name)
        stored[start:start + len(out)] = out.cpu()
        start += len(out)
        labels.append(torch.as_tensor(targets))
    info = dict(samples=start, mb=round(stored.numel() * stored.element_size() / 2**20, 1), stored=where)
    return TensorDataset(stored, torch.cat(labels)), info

"""Many SSF tasks on one frozen backbone, in one forward pass.

Each SSF insertion point holds a (tasks, C) stack of scales and shifts; every sample of a batch
is scaled and shifted with its own task's vectors and classified by its own task's head. The
outputs equal each task's merged model on that sample; the backbone weights exist once.

    mt = MultiTaskModel.from_adapters(["adapters/cifar", "adapters/flowers", "adapters/pets"])
    logits = mt(images, task_ids)        # list of (k_t,) logits, one per sample
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ScaleshiftError
from .profiles import first_line


class TaskScaleShift(nn.Module):
    """A frozen layer followed by per-sample scale/shift chosen by task id."""

    def __init__(self, base_layer: nn.Module, scales: torch.Tensor, shifts: torch.Tensor,
                 mode: str, channel_dim: int):
        super().__init__()
        self.base_layer = base_layer
        self.mode = mode
        if mode == "affine":   # the norm's own channel dim
            if isinstance(base_layer, nn.LayerNorm) and base_layer.weight.ndim == 1:
                channel_dim = -1
            elif isinstance(base_layer, nn.GroupNorm):
                channel_dim = 1
            else:
                raise ScaleshiftError(f"multi-task SSF supports LayerNorm and GroupNorm affines, "
                                      f"not {type(base_layer).__name__}")
            # (norm(x) * w + b) * s + shift = norm(x) * (w * s) + (b * s + shift): one per-task
            # affine after an affine-free normalisation
            weight, bias = base_layer.weight.detach(), base_layer.bias.detach()
            scales, shifts = scales * weight, shifts + scales * bias
        self.register_buffer("scales", scales)     # (tasks, C) - ones where a task has no scale
        self.register_buffer("shifts", shifts)     # (tasks, C) - zeros where it has no shift
        self.channel_dim = channel_dim
        self.task_ids: torch.Tensor | None = None  # set by MultiTaskModel.forward

    def _per_sample(self, table: torch.Tensor, ndim: int) -> torch.Tensor:
        rows = table[self.task_ids]                # (B, C)
        shape = [rows.shape[0]] + [1] * (ndim - 1)
        shape[self.channel_dim % ndim] = rows.shape[1]
        return rows.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.mode == "affine":
            if self.channel_dim == -1:
                y = F.layer_norm(x, base.normalized_shape, None, None, base.eps)
            else:
                y = F.group_norm(x, base.num_groups, None, None, base.eps)
        else:
            y = base(x)
        # inference only (MultiTaskModel runs under no_grad): y is this layer's own fresh output
        return torch.addcmul(self._per_sample(self.shifts, y.ndim), y, self._per_sample(self.scales, y.ndim), out=y)


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: nn.Module, heads: list[nn.Module], names: list[str]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        self.names = names

    @classmethod
    def from_adapters(cls, directories: list[str | Path], pretrained=False,
                      backbone_factory=None) -> "MultiTaskModel":
        """One backbone, the SSF adapters of several tasks (same backbone, same SSF options).
        `backbone_factory(adapter_config) -> plain model` builds the frozen backbone; by default
        the one the adapter's identity record names (`pretrained`: its weights file, if moved)."""
        from .adapter_files import adapter_state, adapter_tensors, backbone_for, fit_adapter
        from .methods.ssf import ScaleShift
        from .models import classifier_parameter_names
        if isinstance(directories, (str, os.PathLike)):
            raise ScaleshiftError("from_adapters takes a list of adapter folders; put a single "
                                  "one in a list")
        if not directories:
            raise ScaleshiftError("give at least one adapter directory")
        adapters = [adapter_tensors(d) for d in directories]   # each adapter read once
        metas = [meta for meta, _ in adapters]
        first = metas[0]
        for d, meta in zip(directories, metas):
            if meta["method"] != "ssf":
                raise ScaleshiftError(f"{d} is a {meta['method']} adapter; multi-task serving "
                                      f"routes SSF adapters only")
            for key in ("backbone_fingerprint", "options"):
                if meta[key] != first[key]:
                    raise ScaleshiftError(f"{d} differs from {directories[0]} in {key}: all tasks "
                                          f"must share one backbone and one SSF configuration")
        factory = backbone_factory or (lambda meta: backbone_for(meta, pretrained or None))
        # ONE backbone: each adapter in turn is loaded onto it (load_adapter verifies the file's
        # checksum and the backbone fingerprint) and its vectors and head are kept
        backbone = factory(first)
        heads, vectors, first_stats = [], {}, None
        for d, (meta, state) in zip(directories, adapters):
            if getattr(backbone, "num_classes", meta["num_classes"]) != meta["num_classes"]:
                backbone.reset_classifier(meta["num_classes"])
            fit_adapter(backbone, meta, state)
            head = classifier_parameter_names(backbone)
            extra = [n for n, p in backbone.named_parameters()
                     if p.requires_grad and ".ssf_" not in n and n not in head]
            if extra:
                raise ScaleshiftError(f"{d} also trains backbone tensors ({extra[0]}, ...), so "
                                      f"they differ per task; multi-task serving needs adapters "
                                      f"whose only backbone tensors are SSF vectors")
            stats = {k: v.clone() for k, v in adapter_state(backbone).items() if k.endswith(("running_mean", "running_var"))}
            first_stats = stats if first_stats is None else first_stats
            if any(not torch.equal(v, first_stats[k]) for k, v in stats.items()):
                raise ScaleshiftError(f"{d} carries its own norm running statistics, which would differ "
                                      f"per task inside one backbone; serve such tasks as merged models")
            heads.append(copy.deepcopy(backbone.get_classifier()).requires_grad_(False))
            for name, module in backbone.named_modules():
                if isinstance(module, ScaleShift):
                    channels = module.base_layer.weight.shape[0] if module.mode == "affine" else _width(module)
                    vectors.setdefault(name, []).append((_vector(module.ssf_scale, channels, 1.0),
                                                         _vector(module.ssf_shift, channels, 0.0)))
        for name, per_task in vectors.items():
            module = backbone.get_submodule(name)
            scales = torch.stack([scale for scale, _ in per_task])
            shifts = torch.stack([shift for _, shift in per_task])
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent) if parent else backbone, child,
                    TaskScaleShift(module.base_layer, scales, shifts, module.mode, module.channel_dim))
        backbone.reset_classifier(0)
        for p in backbone.parameters():
            p.requires_grad_(False)
        model = cls(backbone.eval(), heads, [str(d) for d in directories])
        model.records = metas      # each task's adapter record, as read
        return model

    def _set_tasks(self, task_ids: torch.Tensor | None) -> None:
        for module in self.backbone.modules():
            if isinstance(module, TaskScaleShift):
                module.task_ids = task_ids

    @torch.no_grad()
    def forward(self, images: torch.Tensor, task_ids: torch.Tensor) -> list[torch.Tensor]:
        ids = torch.as_tensor(task_ids, device=images.device)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ScaleshiftError(f"task_ids must be integers, got {ids.dtype}")
        task_ids = ids.long()
        if images.shape[0] == 0:
            raise ScaleshiftError("images is an empty batch; pass at least one image")
        if task_ids.shape != (images.shape[0],) or task_ids.min() < 0 or task_ids.max() >= len(self.heads):
            raise ScaleshiftError(f"task_ids must hold one id in 0..{len(self.heads) - 1} per image")
        self._set_tasks(task_ids)
        try:
            features = self.backbone(images)       # (B, num_features): pre-logits
        except (AssertionError, RuntimeError) as exc:   # a ViT asserts its size, a conv raises
            if isinstance(exc, RuntimeError) and "size" not in str(exc):
                raise   # not a shape problem (e.g. out of memory): as it is
            raise ScaleshiftError(f"the backbone does not take images of shape {tuple(images.shape[1:])} "
                                  f"({first_line(exc)}); pass them at the size the adapters were "
                                  f"trained at") from None
        finally:
            self._set_tasks(None)
        logits: list = [None] * len(task_ids)
        for task in task_ids.unique().tolist():      # each head once, on its own rows
            rows = (task_ids == task).nonzero().flatten()
            for row, out in zip(rows.tolist(), self.heads[task](features[rows])):
                logits[row] = out
        return logits


def _width(wrapper) -> int:
    tensor = wrapper.ssf_shift if wrapper.ssf_shift is not None else wrapper.ssf_scale
    return tensor.shape[0]


def _vector(value: torch.Tensor | None, channels: int, fill: float) -> torch.Tensor:
    if value is None:
        return torch.full((channels,), fill)
    return value.detach().expand(channels).clone() if value.numel() == 1 else value.detach().clone()

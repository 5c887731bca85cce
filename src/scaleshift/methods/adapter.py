"""Bottleneck adapter (Houlsby et al. 2019, Pfeiffer placement): after each block's MLP,
y = mlp(x) + up(GELU(down(mlp(x)))). Not mergeable: it adds layers at inference."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import ScaleshiftError
from ..profiles import family_of
from .base import Method, Option, replace_module

# Path of the block MLP, relative to the block, per family.
ADAPTER_TENSORS = ("down.weight", "down.bias", "up.weight", "up.bias")
MLP_PATHS = {"vit": "mlp", "swin": "mlp", "convnext": "mlp", "as_mlp": "mlp", "mixer": "mlp_channels"}


class AdapterAfter(nn.Module):
    def __init__(self, base_layer: nn.Module, dim: int, bottleneck: int, channel_dim: int):
        super().__init__()
        self.base_layer = base_layer
        self.channel_dim = channel_dim
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)   # start as the identity, as adapters usually do
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        h = y if self.channel_dim == -1 else y.movedim(self.channel_dim, -1)
        h = self.up(self.act(self.down(h)))
        return y + (h if self.channel_dim == -1 else h.movedim(-1, self.channel_dim))


def _mlp_out_channels(mlp: nn.Module) -> tuple[int, int]:
    """(channels, channel dim) of an MLP's output, decided by the type of its last layer."""
    fc2 = getattr(mlp, "fc2", None)
    if isinstance(fc2, nn.Linear):
        return fc2.out_features, -1
    if isinstance(fc2, nn.Conv2d):
        return fc2.out_channels, 1
    raise ScaleshiftError(f"adapter: cannot tell the output channels of {type(mlp).__name__}")


class Adapter(Method):
    name = "adapter"
    description = "Bottleneck adapter after each block's MLP (Houlsby/Pfeiffer)"
    options = {
        "reduction": Option(64, "bottleneck = channels // reduction (64 gives 0.31M on ViT-B)",
                            minimum=1),
        "bottleneck": Option(None, "fixed bottleneck width (overrides reduction)", minimum=1),
    }

    def inject(self, model: nn.Module, opts: dict) -> list[str]:
        family = family_of(model)
        if family is None:
            raise ScaleshiftError(f"adapter supports ViT, Swin, ConvNeXt, AS-MLP and MLP-Mixer; "
                                  f"{type(model).__name__} is none of them")
        suffix = "." + MLP_PATHS[family.name]
        blocks = [n for n, _ in model.named_modules()
                  if n.count(".") == family.block_pattern.count(".")
                  and _matches(n, family.block_pattern)]
        trainable = []
        for block in blocks:
            name = block + suffix
            mlp = model.get_submodule(name)
            channels, dim = _mlp_out_channels(mlp)
            width = opts["bottleneck"] or max(1, channels // opts["reduction"])
            replace_module(model, name, AdapterAfter(mlp, channels, width, dim))
            trainable += [f"{name}.{p}" for p in ADAPTER_TENSORS]
        return trainable

    def merge_state(self, base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
                    options: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
        adapters = sorted({k.rsplit(".", 2)[0] for k in trained if k.endswith(ADAPTER_TENSORS)})
        kept = {k: v for k, v in trained.items() if not k.endswith(ADAPTER_TENSORS)}
        merged, _ = super().merge_state(base, kept, options)
        return merged, [dict(module=name, reason="a bottleneck adapter adds non-linear layers; "
                             "it cannot fold into the plain architecture") for name in adapters]


def _matches(name: str, pattern: str) -> bool:
    parts, pats = name.split("."), pattern.split(".")
    return len(parts) == len(pats) and all(p == q or (q == "*" and p.isdigit())
                                           for p, q in zip(parts, pats))


ADAPTER = Adapter()

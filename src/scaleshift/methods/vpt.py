"""Visual Prompt Tuning (Jia et al., ECCV 2022), shallow and deep, on ViT and Swin.

ViT: `prompts` learnable tokens are inserted after the class/prefix tokens (no position
embedding). Shallow inserts them once before the first block and carries them through; deep
replaces them with fresh ones before every block. They are removed after the last block so the
head sees the same tokens as the plain model.
Swin: prompts join every window's attention as extra tokens (normed by the block's norm1, no
relative-position bias); their outputs are discarded. Deep has fresh prompts in every block,
which is the same function as VPT-deep's token insertion; shallow has prompts in the first
block only (VPT's own Swin code also carries them through stage 1; not reproduced).
Init as VPT: uniform(-v, v), v = sqrt(6 / (3 * patch_area + dim)); dropout on the prompts.
Not mergeable: prompts are extra tokens at inference.
"""
from __future__ import annotations

import math

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from timm.models.vision_transformer import VisionTransformer

from ..errors import ScaleshiftError
from .base import Method, Option, replace_module


def _uniform_prompts(count: int, layers: int, dim: int, patch_area: int) -> nn.Parameter:
    bound = math.sqrt(6.0 / float(3 * patch_area + dim))
    return nn.Parameter(torch.empty(layers, count, dim).uniform_(-bound, bound))


class PromptedBlocks(nn.Module):
    """ViT blocks with prompt tokens. prompts: (1 or depth, P, D)."""

    def __init__(self, base_layer: nn.Sequential, prompts: nn.Parameter, prefix_tokens: int,
                 dropout: float):
        super().__init__()
        self.base_layer = base_layer
        self.prompts = prompts
        self.prefix_tokens = prefix_tokens
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, prefix + N, D)
        batch, p, count = x.shape[0], self.prefix_tokens, self.prompts.shape[1]
        deep = self.prompts.shape[0] > 1
        for i, block in enumerate(self.base_layer):
            if i == 0 or deep:
                fresh = self.dropout(self.prompts[i]).expand(batch, -1, -1)
                rest = x[:, p:] if i == 0 else x[:, p + count:]
                x = torch.cat([x[:, :p], fresh, rest], dim=1)
            x = block(x)
        return torch.cat([x[:, :p], x[:, p + count:]], dim=1)


class PromptedWindowAttention(nn.Module):
    """Swin window attention whose keys/values include `prompts` in every window."""

    def __init__(self, base_layer: nn.Module, norm: nn.Module, prompts: nn.Parameter, dropout: float):
        super().__init__()
        self.base_layer = base_layer
        self.prompts = prompts                       # (P, C)
        self.dropout = nn.Dropout(dropout)
        object.__setattr__(self, "norm", norm)      # the block's norm1, owned by the block

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.base_layer
        windows, tokens, channels = x.shape
        heads, count = attn.num_heads, self.prompts.shape[0]
        qkv = attn.qkv(x).reshape(windows, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                          # (B_, H, N, hd)
        prompt_kv = attn.qkv(self.norm(self.dropout(self.prompts)))
        prompt_kv = prompt_kv.reshape(count, 3, heads, -1).permute(1, 2, 0, 3)[1:]  # (2, H, P, hd)
        k = torch.cat([k, prompt_kv[0].expand(windows, -1, -1, -1)], dim=2)
        v = torch.cat([v, prompt_kv[1].expand(windows, -1, -1, -1)], dim=2)
        bias = F.pad(attn._get_rel_pos_bias(), (0, count))                # (1, H, N, N + P)
        if mask is not None:
            num_win = mask.shape[0]
            mask = F.pad(mask, (0, count)).view(1, num_win, 1, tokens, tokens + count)
            bias = (bias.unsqueeze(1) + mask).reshape(-1, heads, tokens, tokens + count)
            bias = bias.repeat(windows // num_win, 1, 1, 1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=attn.attn_drop.p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(windows, tokens, -1)
        return attn.proj_drop(attn.proj(out))


class VPT(Method):
    description_deep = {False: "VPT-shallow: prompt tokens at the input (Jia et al. 2022)",
                        True: "VPT-deep: fresh prompt tokens before every block (Jia et al. 2022)"}

    def __init__(self, deep: bool):
        self.deep = deep
        self.name = "vpt_deep" if deep else "vpt_shallow"
        self.description = self.description_deep[deep]
        self.options = {
            "prompts": Option(50, "number of prompt tokens (per layer for deep)", minimum=1),
            "dropout": Option(0.1, "dropout on the prompt tokens", minimum=0.0, maximum=1.0),
        }

    def inject(self, model: nn.Module, opts: dict) -> list[str]:
        count, dropout = opts["prompts"], opts["dropout"]
        if isinstance(model, VisionTransformer):
            patch = model.patch_embed.patch_size
            depth = len(model.blocks)
            prompts = _uniform_prompts(count, depth if self.deep else 1, model.embed_dim,
                                       patch[0] * patch[1])
            replace_module(model, "blocks", PromptedBlocks(model.blocks, prompts,
                                                           model.num_prefix_tokens, dropout))
            return ["blocks.prompts"]
        if isinstance(model, SwinTransformer):
            patch = model.patch_embed.patch_size
            blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, SwinTransformerBlock)]
            trainable = []
            for name, block in (blocks if self.deep else blocks[:1]):
                prompts = _uniform_prompts(count, 1, block.norm1.weight.shape[0], patch[0] * patch[1])
                wrapper = PromptedWindowAttention(block.attn, block.norm1, nn.Parameter(prompts[0]),
                                                  dropout)
                replace_module(model, f"{name}.attn", wrapper)
                trainable.append(f"{name}.attn.prompts")
            return trainable
        raise ScaleshiftError(f"{self.name} works on ViT and Swin (token models); "
                              f"{type(model).__name__} has no tokens to prompt")

    def merge_state(self, base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
                    options: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
        prompts = sorted(k for k in trained if k.endswith(".prompts"))
        kept = {k: v for k, v in trained.items() if not k.endswith(".prompts")}
        merged, _ = super().merge_state(base, kept, options)
        return merged, [dict(module=k.rpartition(".")[0], reason="prompt tokens are extra inputs "
                             "at inference; they cannot fold into the plain architecture")
                        for k in prompts]


VPT_SHALLOW = VPT(deep=False)
VPT_DEEP = VPT(deep=True)

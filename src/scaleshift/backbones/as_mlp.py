"""AS-MLP backbone as a timm model.

Implements the architecture of

    Lian, Yu, Sun, Gao. "AS-MLP: An Axial Shifted MLP Architecture for Vision", ICLR 2022.
    https://arxiv.org/abs/2107.08391

The module tree (and therefore the ``state_dict`` key names and shapes) follows the
official release (https://github.com/svip-lab/AS-MLP) so that its checkpoints, e.g.
``asmlp_base_patch4_shift5_224.pth`` (weights stored under ``'model'``), load with
``strict=True``. The whole network operates on NCHW tensors; every norm is
``GroupNorm(1, C)``; every projection inside the stages is a 1x1 convolution.

Per-block parameter layout (prefix ``layers.{i}.blocks.{j}.``)::

    norm1.{weight,bias}                       GroupNorm(1, C)
    axial_shift.conv1.{weight,bias}           Conv2d(C, C, 1)
    axial_shift.conv2_1.{weight,bias}         Conv2d(C, C, 1)   (left/right branch)
    axial_shift.conv2_2.{weight,bias}         Conv2d(C, C, 1)   (top/down branch)
    axial_shift.conv3.{weight,bias}           Conv2d(C, C, 1)
    axial_shift.norm1.{weight,bias}           GroupNorm(1, C)
    axial_shift.norm2.{weight,bias}           GroupNorm(1, C)
    norm2.{weight,bias}                       GroupNorm(1, C)
    mlp.fc1.{weight,bias}                     Conv2d(C, 4C, 1)
    mlp.fc2.{weight,bias}                     Conv2d(4C, C, 1)

Between stages (``layers.{i}.downsample.``, i < 3): ``norm`` GroupNorm(1, 4C) and
``reduction`` Conv2d(4C, 2C, 1, bias=False). Stem: ``patch_embed.proj`` /
``patch_embed.norm``. Tail: ``norm`` and ``head``.

Importing this module registers ``as_mlp_tiny``, ``as_mlp_small``, ``as_mlp_base`` and
the tiny test configuration ``as_mlp_test`` with timm.
"""
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, register_notrace_function, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices   # timm exports it nowhere public

__all__ = ['AsMlp', 'axial_shift', 'checkpoint_filter_fn', 'convert_official_checkpoint']


@register_notrace_function  # data-dependent python loop over channel groups
def axial_shift(x: torch.Tensor, shift_size: int, dim: int) -> torch.Tensor:
    """Shift channel groups of an NCHW tensor along one spatial axis, zero filling.

    Channels are split into consecutive groups of ``ceil(C / shift_size)`` channels
    (the last group may be smaller, and there may be fewer than ``shift_size`` groups).
    Group ``g`` is displaced by ``g - shift_size // 2`` positions along ``dim``
    (2 = height / "top-down", 3 = width / "left-right"), i.e.
    ``out[:, c, ..., p, ...] = x[:, c, ..., p + shift_size // 2 - g, ...]`` with zeros where
    the source index falls outside the map. This is the same mapping as the official
    zero-pad / channel-chunk / roll / crop formulation and its CUDA kernel.
    """
    if dim not in (2, 3):
        raise ValueError(f'dim must be 2 (H) or 3 (W), got {dim}')
    if shift_size <= 1:
        return x
    pad = shift_size // 2
    length = x.shape[dim]
    # zero-pad only the shifted axis, then take a window whose start depends on the group
    padding = (0, 0, pad, pad) if dim == 2 else (pad, pad, 0, 0)
    xp = F.pad(x, padding)
    group = int(math.ceil(x.shape[1] / shift_size))
    parts = []
    for g, chunk in enumerate(torch.split(xp, group, dim=1)):
        parts.append(chunk.narrow(dim, 2 * pad - g, length))
    return torch.cat(parts, dim=1)


def _group_norm(num_channels: int, device=None, dtype=None) -> nn.Module:
    # AS-MLP normalizes over (C, H, W) jointly, i.e. a single-group GroupNorm
    return nn.GroupNorm(1, num_channels, device=device, dtype=dtype)


class ConvMlp(nn.Module):
    """Channel MLP made of two 1x1 convolutions (``fc1`` -> act -> ``fc2``)."""

    def __init__(
            self,
            in_features: int,
            hidden_features: Optional[int] = None,
            out_features: Optional[int] = None,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            drop: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Conv2d(in_features, hidden_features, kernel_size=1, **dd)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_features, out_features, kernel_size=1, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class AxialShift(nn.Module):
    """Axial shift token mixer.

    conv1 -> norm1 -> act, then two parallel branches: shift along W -> conv2_1 -> act and
    shift along H -> conv2_2 -> act; the branches are summed, normalized (norm2) and
    projected by conv3.
    """

    def __init__(
            self,
            dim: int,
            shift_size: int,
            as_bias: bool = True,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.shift_size = shift_size
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=1, bias=as_bias, **dd)
        self.conv2_1 = nn.Conv2d(dim, dim, kernel_size=1, bias=as_bias, **dd)
        self.conv2_2 = nn.Conv2d(dim, dim, kernel_size=1, bias=as_bias, **dd)
        self.conv3 = nn.Conv2d(dim, dim, kernel_size=1, bias=as_bias, **dd)
        self.actn = act_layer()
        self.norm1 = _group_norm(dim, **dd)
        self.norm2 = _group_norm(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.actn(self.norm1(self.conv1(x)))
        x_lr = self.actn(self.conv2_1(axial_shift(x, self.shift_size, 3)))
        x_td = self.actn(self.conv2_2(axial_shift(x, self.shift_size, 2)))
        x = self.norm2(x_lr + x_td)
        return self.conv3(x)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, shift_size={self.shift_size}'


class AxialShiftedBlock(nn.Module):
    """Pre-norm residual block: x + AxialShift(norm1(x)), then x + MLP(norm2(x))."""

    def __init__(
            self,
            dim: int,
            shift_size: int = 5,
            mlp_ratio: float = 4.,
            as_bias: bool = True,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = _group_norm(dim, **dd)
        self.axial_shift = AxialShift(dim, shift_size=shift_size, as_bias=as_bias, act_layer=act_layer, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = _group_norm(dim, **dd)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.axial_shift(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class PatchMerging(nn.Module):
    """2x2 space-to-channel merge (order: (0,0), (1,0), (0,1), (1,1)), norm, 1x1 conv 4C -> 2C."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.reduction = nn.Conv2d(4 * dim, 2 * dim, kernel_size=1, bias=False, **dd)
        self.norm = _group_norm(4 * dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[-2] % 2 == 0, 'PatchMerging needs an even feature map height')
        torch._assert(x.shape[-1] % 2 == 0, 'PatchMerging needs an even feature map width')
        x = torch.cat([
            x[:, :, 0::2, 0::2],  # even row, even col
            x[:, :, 1::2, 0::2],  # odd row, even col
            x[:, :, 0::2, 1::2],  # even row, odd col
            x[:, :, 1::2, 1::2],  # odd row, odd col
        ], dim=1)
        return self.reduction(self.norm(x))


class AsMlpStage(nn.Module):
    """A stage: ``blocks`` followed by an optional ``downsample`` (PatchMerging) at its end."""

    def __init__(
            self,
            dim: int,
            depth: int,
            shift_size: int = 5,
            mlp_ratio: float = 4.,
            as_bias: bool = True,
            proj_drop: float = 0.,
            drop_path: Union[float, Sequence[float]] = 0.,
            downsample: bool = True,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.grad_checkpointing = False
        if isinstance(drop_path, (int, float)):
            drop_path = [float(drop_path)] * depth
        self.blocks = nn.ModuleList([
            AxialShiftedBlock(
                dim,
                shift_size=shift_size,
                mlp_ratio=mlp_ratio,
                as_bias=as_bias,
                proj_drop=proj_drop,
                drop_path=drop_path[i],
                act_layer=act_layer,
                **dd,
            )
            for i in range(depth)
        ])
        self.downsample = PatchMerging(dim, **dd) if downsample else None

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_blocks(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping patchify conv (``proj``) plus optional ``norm``."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            embed_dim: int = 96,
            norm: bool = True,
            strict_img_size: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.strict_img_size = strict_img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, **dd)
        self.norm = _group_norm(embed_dim, **dd) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strict_img_size:
            torch._assert(x.shape[-2] == self.img_size[0], 'Input height does not match img_size.')
            torch._assert(x.shape[-1] == self.img_size[1], 'Input width does not match img_size.')
        x = self.proj(x)
        if self.norm is not None:
            x = self.norm(x)
        return x


class AsMlp(nn.Module):
    """AS-MLP: An Axial Shifted MLP Architecture for Vision.

    Args:
        img_size: Nominal input size (only enforced when ``strict_img_size=True``; otherwise any
            size divisible by ``patch_size * 2 ** (num_stages - 1)`` works).
        patch_size: Patch embedding stride / kernel.
        in_chans: Input channels.
        num_classes: Classifier classes (0 -> ``head`` is ``nn.Identity``).
        global_pool: ``'avg'`` or ``''`` (no pooling in ``forward_head``).
        embed_dim: Channels of the first stage (doubled at every stage).
        depths: Blocks per stage.
        shift_size: Number of axial shift positions (odd).
        mlp_ratio: Hidden ratio of the channel MLP.
        as_bias: Bias on the axial-shift 1x1 convs.
        patch_norm: Normalize after the patch embedding.
        drop_rate: Dropout before the classifier (timm convention).
        proj_drop_rate: Dropout after the patch embedding and inside the MLPs (the official
            code's ``drop_rate``).
        drop_path_rate: Stochastic depth rate, linearly increased over all blocks.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            shift_size: int = 5,
            mlp_ratio: float = 4.,
            as_bias: bool = True,
            patch_norm: bool = True,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            strict_img_size: bool = False,
            act_layer: Callable[..., nn.Module] = nn.GELU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        assert global_pool in ('', 'avg'), f'Unsupported global_pool {global_pool}'
        assert shift_size % 2 == 1, 'shift_size must be odd'
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.output_fmt = 'NCHW'
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.shift_size = shift_size
        self.num_features = self.head_hidden_size = int(embed_dim * 2 ** (self.num_layers - 1))
        self.drop_rate = drop_rate

        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            norm=patch_norm,
            strict_img_size=strict_img_size,
            **dd,
        )
        self.pos_drop = nn.Dropout(proj_drop_rate)

        dpr = [r.item() for r in torch.linspace(0, drop_path_rate, sum(depths), device='cpu')]
        self.layers = nn.ModuleList()
        self.feature_info = []
        block_start = 0
        reduction = patch_size
        for i, depth in enumerate(depths):
            dim = int(embed_dim * 2 ** i)
            self.layers.append(AsMlpStage(
                dim,
                depth,
                shift_size=shift_size,
                mlp_ratio=mlp_ratio,
                as_bias=as_bias,
                proj_drop=proj_drop_rate,
                drop_path=dpr[block_start:block_start + depth],
                downsample=i < self.num_layers - 1,
                act_layer=act_layer,
                **dd,
            ))
            # features are tapped after the blocks of stage i, before its downsample
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f'layers.{i}'))
            block_start += depth
            reduction *= 2

        self.norm = _group_norm(self.num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

        self._init_head()

    def _init_head(self) -> None:
        # official init only touches nn.Linear (the head); convs / norms keep PyTorch defaults
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            if self.head.bias is not None:
                nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^patch_embed',
            blocks=r'^layers\.(\d+)' if coarse else [
                (r'^layers\.(\d+)\.downsample', (0,)),  # merge belongs with the end of its stage
                (r'^layers\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            assert global_pool in ('', 'avg'), f'Unsupported global_pool {global_pool}'
            self.global_pool = global_pool
        p = next(self.parameters(), None)
        dd = dict(device=p.device, dtype=p.dtype) if p is not None else {}
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self._init_head()

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Return per-stage features (taken after each stage's blocks, before its downsample)."""
        assert output_fmt == 'NCHW', 'Output format must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        x = self.pos_drop(self.patch_embed(x))
        last = len(self.layers) - 1
        if torch.jit.is_scripting() or not stop_early:
            stages = self.layers
        else:
            stages = self.layers[:max_index + 1]
        for i, stage in enumerate(stages):
            x = stage.forward_blocks(x)
            if i in take_indices:
                # the final norm is sized for (and only applied to) the last stage
                intermediates.append(self.norm(x) if norm and i == last else x)
            if stage.downsample is not None and i < len(stages) - 1:
                x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        if len(stages) - 1 == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        self.layers[-1].downsample = None
        if max_index < self.num_layers - 1 or prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x))
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
    """Adapt an official AS-MLP checkpoint to this implementation.

    Official checkpoints are ``{'model': state_dict, 'optimizer': ..., ...}``; the weights are
    unwrapped (also ``'state_dict'``) and a DDP ``module.`` prefix is stripped. The key layout
    is otherwise identical. AS-MLP has no registered buffers, so nothing is recomputed/dropped.
    """
    for wrapper_key in ('model', 'state_dict'):
        if isinstance(state_dict.get(wrapper_key, None), dict):
            state_dict = state_dict[wrapper_key]
            break
    out = {}
    for k, v in state_dict.items():
        if k.startswith('module.'):
            k = k[len('module.'):]
        out[k] = v
    return out


def convert_official_checkpoint(src: str, dst: str) -> str:
    """Re-save a *trusted* official AS-MLP training checkpoint as a plain weights file.

    Raw training checkpoints of the official code also pickle the yacs ``config`` object,
    which timm's ``weights_only=True`` loader refuses. This loads ``src`` with
    ``weights_only=False`` (only use on files you trust), keeps the model weights and writes
    ``dst`` -- as safetensors if ``dst`` ends with ``.safetensors``, else as ``{'model': sd}``.
    The result can then be used via ``pretrained_cfg_overlay=dict(file=dst)``.
    """
    from pathlib import Path

    from ..errors import ScaleshiftError
    from ..io import atomic_path, save_safetensors
    if Path(dst).exists() or Path(dst).is_symlink():
        raise ScaleshiftError(f"{dst} exists, and convert_official_checkpoint never replaces a "
                              f"file: pass a new path (nothing was written)")
    ckpt = torch.load(src, map_location='cpu', weights_only=False)
    sd = checkpoint_filter_fn(ckpt)
    sd = {k: v.detach().contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if str(dst).endswith('.safetensors'):
        save_safetensors(sd, dst)
    else:
        with atomic_path(dst) as tmp:
            torch.save({'model': sd}, tmp)
    return str(dst)


def _create_as_mlp(variant: str, pretrained: bool = False, **kwargs) -> AsMlp:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        AsMlp,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.9,
        'interpolation': 'bicubic',
        'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        'license': 'mit',
        'origin_url': 'https://github.com/svip-lab/AS-MLP',
        'paper_ids': 'arXiv:2107.08391',
        'paper_name': 'AS-MLP: An Axial Shifted MLP Architecture for Vision',
        **kwargs,
    }


# No hosted weights: load the official release through
# pretrained_cfg_overlay=dict(file='/path/to/asmlp_{tiny,small,base}_patch4_shift5_224.pth').
default_cfgs = generate_default_cfgs({
    'as_mlp_tiny.in1k': _cfg(),
    'as_mlp_small.in1k': _cfg(),
    'as_mlp_base.in1k': _cfg(),
    'as_mlp_test.untrained': _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
})


@register_model
def as_mlp_tiny(pretrained: bool = False, **kwargs) -> AsMlp:
    """AS-MLP-T (official asmlp_tiny_patch4_shift5_224), ~28M params."""
    model_args = dict(patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), shift_size=5, mlp_ratio=4.)
    kwargs.setdefault('drop_path_rate', 0.2)
    return _create_as_mlp('as_mlp_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def as_mlp_small(pretrained: bool = False, **kwargs) -> AsMlp:
    """AS-MLP-S (official asmlp_small_patch4_shift5_224), ~50M params."""
    model_args = dict(patch_size=4, embed_dim=96, depths=(2, 2, 18, 2), shift_size=5, mlp_ratio=4.)
    kwargs.setdefault('drop_path_rate', 0.3)
    return _create_as_mlp('as_mlp_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def as_mlp_base(pretrained: bool = False, **kwargs) -> AsMlp:
    """AS-MLP-B (official asmlp_base_patch4_shift5_224), ~88M params."""
    model_args = dict(patch_size=4, embed_dim=128, depths=(2, 2, 18, 2), shift_size=5, mlp_ratio=4.)
    kwargs.setdefault('drop_path_rate', 0.5)
    return _create_as_mlp('as_mlp_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def as_mlp_test(pretrained: bool = False, **kwargs) -> AsMlp:
    """Tiny AS-MLP for unit tests (64x64 input, embed_dim 16, depths (1, 1, 2, 1))."""
    model_args = dict(img_size=64, patch_size=4, embed_dim=16, depths=(1, 1, 2, 1), shift_size=5, mlp_ratio=4.)
    return _create_as_mlp('as_mlp_test', pretrained=pretrained, **dict(model_args, **kwargs))

"""Where a method goes in each model family.

The family of a model is decided by its class (and its block class), never by its name.
A profile lists insertion points: module paths, the location group each belongs to
(embed | attn | mlp | norm | final) and the index of the block it sits in. Hugging Face
transformers image classifiers have their own families (the same points under transformers'
module names); a transformers class with no family here is refused (`transformers_family`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame
from timm.models.convnext import ConvNeXt, ConvNeXtBlock
from timm.models.mlp_mixer import MixerBlock, MlpMixer
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from .backbones.as_mlp import AsMlp
from .errors import ScaleshiftError
from .extras import require
from .models import is_transformers_model

GROUPS = ("embed", "attn", "mlp", "norm", "final")


@dataclass(frozen=True)
class Point:
    name: str                # module path inside the model
    group: str               # one of GROUPS; "layer" or "norm" in the generic profile
    block: int | None        # forward-order index of the block, None outside the blocks


@dataclass(frozen=True)
class Family:
    name: str
    model_class: type
    patterns: tuple[tuple[str, str], ...]   # (module path with * for indices, group)
    block_pattern: str                      # the path prefix that identifies one block
    block_class: type | None = None
    head_norm: str | None = None   # a norm after pooling that SSF trains too (ConvNeXt's head norm)
    pre_pool: str | None = None    # a module on the residual stream before pooling (ConvNeXt)

    def fits(self, model: nn.Module) -> bool:
        if not isinstance(model, self.model_class):
            return False
        if self.block_class is None:
            return True
        return any(isinstance(m, self.block_class) for m in model.modules())


def _asmlp_family() -> Family:
    return Family(
        "as_mlp", AsMlp,
        (("layers.*.blocks.*.norm1", "norm"),
         ("layers.*.blocks.*.axial_shift.conv1", "attn"),
         ("layers.*.blocks.*.axial_shift.conv2_1", "attn"),
         ("layers.*.blocks.*.axial_shift.conv2_2", "attn"),
         ("layers.*.blocks.*.axial_shift.conv3", "attn"),
         ("layers.*.blocks.*.norm2", "norm"),
         ("layers.*.blocks.*.mlp.fc1", "mlp"),
         ("layers.*.blocks.*.mlp.fc2", "mlp"),
         ("norm", "final")),
        "layers.*.blocks.*")


FAMILIES: tuple[Family, ...] = (
    # Official SSF ViT: patch-embed projection (+ its norm), per block norm1, qkv, proj, norm2,
    # fc1, fc2, and the final norm (fc_norm when the model pools with one instead).
    Family("vit", VisionTransformer,
           (("patch_embed.proj", "embed"), ("patch_embed.norm", "embed"),
            ("blocks.*.norm1", "norm"), ("blocks.*.attn.qkv", "attn"),
            ("blocks.*.attn.proj", "attn"), ("blocks.*.norm2", "norm"),
            ("blocks.*.mlp.fc1", "mlp"), ("blocks.*.mlp.fc2", "mlp"),
            ("norm", "final"), ("fc_norm", "final")),
           "blocks.*"),
    # Official SSF Swin: as ViT; its PatchMerging SSF is dead code, and the paper's counts
    # match that, so the downsample layers get nothing here.
    Family("swin", SwinTransformer,
           (("patch_embed.proj", "embed"), ("patch_embed.norm", "embed"),
            ("layers.*.blocks.*.norm1", "norm"), ("layers.*.blocks.*.attn.qkv", "attn"),
            ("layers.*.blocks.*.attn.proj", "attn"), ("layers.*.blocks.*.norm2", "norm"),
            ("layers.*.blocks.*.mlp.fc1", "mlp"), ("layers.*.blocks.*.mlp.fc2", "mlp"),
            ("norm", "final")),
           "layers.*.blocks.*"),
    # Official SSF ConvNeXt: stem conv + stem norm, per block conv_dw, norm, fc1, fc2. Its final
    # SSF (1 x C) is added by the SSF method itself (see methods/ssf.py, option convnext_final).
    Family("convnext", ConvNeXt,
           (("stem.0", "embed"), ("stem.1", "embed"),
            ("stages.*.blocks.*.conv_dw", "attn"), ("stages.*.blocks.*.norm", "norm"),
            ("stages.*.blocks.*.mlp.fc1", "mlp"), ("stages.*.blocks.*.mlp.fc2", "mlp")),
           "stages.*.blocks.*", ConvNeXtBlock, head_norm="head.norm", pre_pool="norm_pre"),
    # MLP-Mixer (no official SSF file; by analogy with ViT): stem projection, per block norm1,
    # token-mixing fc1/fc2 (group attn), norm2, channel fc1/fc2, final norm.
    Family("mixer", MlpMixer,
           (("stem.proj", "embed"), ("stem.norm", "embed"),
            ("blocks.*.norm1", "norm"), ("blocks.*.mlp_tokens.fc1", "attn"),
            ("blocks.*.mlp_tokens.fc2", "attn"), ("blocks.*.norm2", "norm"),
            ("blocks.*.mlp_channels.fc1", "mlp"), ("blocks.*.mlp_channels.fc2", "mlp"),
            ("norm", "final")),
           "blocks.*", MixerBlock),
)


def _vit_like(root: str, block: str, norm1: str, norm2: str, mlp: tuple[str, str],
              embed_norm: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """The official ViT / Swin points (patch projection [+ its norm]; per block norm1, q, k, v,
    output projection, norm2, MLP in and out; final norm) under transformers' 5.x names: its
    separate q/k/v projections together are timm's fused qkv."""
    return ((f"{root}.embeddings.patch_embeddings.projection", "embed"),
            *((f"{root}.embeddings.{n}", "embed") for n in embed_norm),
            (f"{block}.{norm1}", "norm"),
            *((f"{block}.attention.{p}_proj", "attn") for p in "qkvo"),
            (f"{block}.{norm2}", "norm"),
            *((f"{block}.mlp.{n}", "mlp") for n in mlp),
            (f"{root}.layernorm", "final"))


def transformers_families() -> tuple[Family, ...]:
    """The transformers image classifiers whose head, insertion points and merge are verified
    (tests/test_transformers_models.py). Swin's patch merging and ConvNeXt's downsampling get
    no SSF, as with timm; ConvNeXtModel's pooled layernorm is timm's head.norm."""
    tf = require("transformers", "a Hugging Face transformers model")
    vit_block, deit_block = "vit.layers.*", "deit.layers.*"
    dino_block, swin_block = "dinov2.encoder.layer.*", "swin.encoder.layers.*.blocks.*"
    convnext_block = "convnext.encoder.stages.*.layers.*"
    return (
        Family("transformers_vit", tf.ViTForImageClassification,
               _vit_like("vit", vit_block, "layernorm_before", "layernorm_after", ("fc1", "fc2")),
               vit_block),
        Family("transformers_deit", tf.DeiTForImageClassification,
               _vit_like("deit", deit_block, "layernorm_before", "layernorm_after", ("fc1", "fc2")),
               deit_block),
        Family("transformers_dinov2", tf.Dinov2ForImageClassification,
               _vit_like("dinov2", dino_block, "norm1", "norm2",
                         ("fc1", "fc2", "gate_proj", "up_proj", "down_proj")),   # or use_swiglu_ffn
               dino_block),
        Family("transformers_swin", tf.SwinForImageClassification,
               _vit_like("swin", swin_block, "layernorm_before", "layernorm_after", ("fc1", "fc2"),
                         embed_norm=("norm",)),
               swin_block),
        Family("transformers_convnext", tf.ConvNextForImageClassification,
               (("convnext.embeddings.patch_embeddings", "embed"),
                ("convnext.embeddings.layernorm", "embed"),
                (f"{convnext_block}.dwconv", "attn"), (f"{convnext_block}.layernorm", "norm"),
                (f"{convnext_block}.pwconv1", "mlp"), (f"{convnext_block}.pwconv2", "mlp")),
               convnext_block, head_norm="convnext.layernorm"),
    )


def families_for(model: nn.Module) -> tuple[Family, ...]:
    """The families `model` may belong to: transformers' for a transformers model, else timm's."""
    if is_transformers_model(model):
        return transformers_families()
    return FAMILIES + (_asmlp_family(),)


def family_of(model: nn.Module) -> Family | None:
    for family in families_for(model):
        if family.fits(model):
            return family
    return None


def transformers_family(model: nn.Module) -> Family:
    """The family of a transformers model, or an error naming the classes scaleshift supports."""
    family = family_of(model)
    if family is None:
        supported = ", ".join(f.model_class.__name__ for f in transformers_families())
        raise ScaleshiftError(
            f"{type(model).__name__} is a transformers model scaleshift does not support: its "
            f"classifier head and exact merge are verified only for {supported}. Use one of "
            f"those, or the timm version of the architecture (scaleshift.create_model)")
    return family


def _pattern_regex(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(r"\*", r"\d+"))


def _block_key(name: str, block_pattern: str) -> str | None:
    match = re.match(re.escape(block_pattern).replace(r"\*", r"\d+") + r"(\.|$)", name)
    return match.group(0).rstrip(".") if match else None


def paper_points(model: nn.Module, family: Family) -> list[Point]:
    """The official insertion points of `family`, in forward order, Identity modules skipped."""
    compiled = [(_pattern_regex(p), group) for p, group in family.patterns]
    block_index: dict[str, int] = {}
    points = []
    for name, module in model.named_modules():
        key = _block_key(name, family.block_pattern)
        if key is not None and key == name:
            block_index[key] = len(block_index)
        for regex, group in compiled:
            if regex.fullmatch(name):
                if isinstance(module, nn.Identity):
                    break
                if not (is_foldable_layer(module) or is_affine_norm(module)):
                    raise ScaleshiftError(
                        f"{name} is a {type(module).__name__}, not a Linear/Conv/norm, so the "
                        f"'paper' profile for {family.name} does not fit this model; "
                        f"use the option profile=all")
                points.append(Point(name, group, block_index[key] if key else None))
                break
    if not any(p.block is not None for p in points):
        raise ScaleshiftError(f"the 'paper' profile for {family.name} found no blocks in this "
                              f"model; use the option profile=all")
    return points


LINEAR_CONV = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_STANDARD_FORWARDS = {nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward,
                      nn.Conv3d.forward, Conv2dSame.forward}
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def is_foldable_layer(module: nn.Module) -> bool:
    """A Linear/Conv whose output is linear in its weight rows (so a per-output-channel scale
    folds into them). Subclasses that transform the weight first (e.g. weight
    standardisation) do not qualify."""
    return isinstance(module, LINEAR_CONV) and type(module).forward in _STANDARD_FORWARDS


# Convolutions that standardise their weight per output channel at run time and then multiply
# it by a learnt per-channel `gain` (NFNet's ScaledStdConv2d): a scale on their output folds into
# the gain instead of the weight, which the standardisation would undo.
GAIN_CONVS = (ScaledStdConv2d, ScaledStdConv2dSame)


def is_gain_conv(module: nn.Module) -> bool:
    return type(module) in GAIN_CONVS


def is_affine_norm(module: nn.Module) -> bool:
    """A norm layer with a learnable per-channel affine weight."""
    weight = getattr(module, "weight", None)
    is_norm = isinstance(module, NORM_TYPES) or type(module).__name__.lower().startswith("rmsnorm")
    return is_norm and isinstance(weight, nn.Parameter) and weight.ndim == 1


def input_size_of(model: nn.Module) -> tuple[int, ...]:
    if is_transformers_model(model):
        size = model.config.image_size
        height, width = (size, size) if isinstance(size, int) else size
        return (model.config.num_channels, height, width)
    cfg_size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224)))
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:   # models built with img_size=... keep a 224 pretrained_cfg
        return (cfg_size[0], *tuple(img_size))
    return cfg_size


def first_line(error: Exception) -> str:
    """An exception's first line (at most 200 characters), or its type when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".")[:200] if text else type(error).__name__


def check_takes_input(model: nn.Module, images: torch.Tensor, setting: str, hint: str,
                      *more_inputs) -> None:
    """`images` through the model once (eval mode, no grad; its mode restored): an input size the
    backbone cannot take (a ViT's is fixed when it is built, a convolution needs a minimum) is a
    usage error naming `setting`, not a traceback from the middle of a run."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images, *more_inputs)
    except Exception as e:   # a ViT asserts, a convolution raises RuntimeError, ONNX Runtime its own
        raise ScaleshiftError(f"{setting}: the model does not take {tuple(images.shape[1:])} input "
                              f"({first_line(e)}); {hint}") from None
    finally:
        model.train(was_training)


def called_modules(model: nn.Module, names: list[str]) -> set[str] | None:
    """Which of `names` the model actually calls in a forward pass (some models read a layer's
    weight directly instead, e.g. BEiT's qkv with its separate q/v biases). None when a dry run
    is not possible for this model."""
    called: set[str] = set()
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda module, args, name=n: called.add(name)) for n in names]
    was_training = model.training
    try:
        param = next(model.parameters())
        x = torch.zeros(1, *input_size_of(model), device=param.device, dtype=param.dtype)
        model.eval()
        with torch.no_grad():
            model(x)
    except Exception:   # an unusual input contract: keep every candidate
        return None
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return called


def generic_points(model: nn.Module, skip: set[str]) -> list[Point]:
    """After every foldable Linear/Conv (a gain conv included) and every affine norm of any model
    that the model calls as a module, in forward order. `skip` holds module paths to leave alone
    (the head). A model where nothing outside the head qualifies is refused, naming the layer
    types passed over, rather than trained as a linear probe."""
    points = []
    opaque: list[str] = []   # modules whose children's weights are read directly, not called
    passed_over: set[str] = set()
    for name, module in model.named_modules():
        if not name or name in skip or any(name.startswith(o + ".") for o in opaque):
            continue
        if isinstance(module, nn.MultiheadAttention):
            opaque.append(name)
            continue
        if is_foldable_layer(module) or is_gain_conv(module):
            points.append(Point(name, "layer", None))
        elif is_affine_norm(module):
            points.append(Point(name, "norm", None))
        elif isinstance(module, LINEAR_CONV):
            passed_over.add(type(module).__name__)
    called = called_modules(model, [p.name for p in points])
    points = points if called is None else [p for p in points if p.name in called]
    if not points:
        skipped = (f"; it passed over {', '.join(sorted(passed_over))} (their forward transforms "
                   f"the weight, e.g. weight standardisation, so a scale cannot fold into it)"
                   if passed_over else "")
        raise ScaleshiftError(
            f"SSF found no Linear, Conv or affine norm layer outside the classifier head of "
            f"{type(model).__name__}{skipped}. Training it would be linear probing: use "
            f"method=linear for that, or a backbone with such layers")
    return points

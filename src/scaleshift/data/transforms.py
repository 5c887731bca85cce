"""Transforms per paper setting and backbone, built with timm's resolve_data_config and
create_transform (so input size, mean/std, interpolation and crop_pct follow the backbone).

    from scaleshift.data import build_transform
    train_tf = build_transform("cifar", "vit_base_patch16_224.augreg_in21k", is_training=True)
    eval_tf = build_transform("cifar", model, is_training=False)

setting    training                                             evaluation
vtab       direct resize to the input size, no augmentation     the same
fgvc       RandomResizedCrop (random interpolation) + hflip     resize floor(size / crop_pct),
                                                                centre crop
cifar      RandAugment rand-m9-mstd0.5-inc1, RandomResizedCrop  resize floor(size / crop_pct),
imagenet   scale (0.08, 1), hflip 0.5, random interpolation     centre crop
           (the official train.py defaults)
Eval interpolation, crop_pct, mean and std come from the backbone (ViT: bicubic, 0.9,
mean = std = 0.5; ConvNeXt: crop_pct 0.875, ImageNet mean/std). Mixup / CutMix / label
smoothing act on batches and belong to the training engine, not here, and so does random
erasing (`random_erasing`): the official code erases each image of the batch AFTER mixup.
"""
from __future__ import annotations

from timm.data import create_transform, resolve_data_config

from ..errors import ScaleshiftError

STRONG_AUG = dict(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.0, scale=(0.08, 1.0),
                  hflip=0.5, interpolation="random")
SIMPLE_AUG = dict(auto_augment=None, color_jitter=None, re_prob=0.0, scale=(0.08, 1.0), hflip=0.5,
                  interpolation="random")
SETTINGS = ("vtab", "fgvc", "cifar", "imagenet")


def resolve_config(model) -> dict:
    """timm data config (input_size, interpolation, mean, std, crop_pct, crop_mode) of a model,
    a timm model name (with tag, e.g. 'convnext_base.fb_in22k') or a pretrained_cfg dict."""
    if isinstance(model, str):
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(model)
        if cfg is None:
            raise ScaleshiftError(f"timm has no pretrained config for {model!r}; pass the model "
                                  f"or a pretrained_cfg dict")
        return resolve_data_config(pretrained_cfg=cfg.to_dict())
    if isinstance(model, dict):
        return resolve_data_config(pretrained_cfg=model)
    return resolve_data_config(model=model)


def build_transform(setting: str, model, is_training: bool, input_size: int | None = None,
                    **overrides):
    """The transform of a paper `setting` for `model` (see the module table). `input_size`
    overrides the backbone's (e.g. 32 for tiny test models); `overrides` go to create_transform."""
    if setting not in SETTINGS:
        raise ScaleshiftError(f"unknown transform setting {setting!r}; "
                              f"one of {', '.join(SETTINGS)}")
    cfg = resolve_config(model)
    size = cfg["input_size"] if input_size is None else (3, input_size, input_size)
    base = dict(input_size=size, mean=cfg["mean"], std=cfg["std"],
                interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"],
                crop_mode=cfg.get("crop_mode", "center"))
    if setting == "vtab":
        # 'squash' with crop_pct 1: Resize((size, size)) then a no-op centre crop
        args = dict(base, is_training=False, crop_pct=1.0, crop_mode="squash")
    elif not is_training:
        args = dict(base, is_training=False)
    elif setting == "fgvc":
        args = dict(base, is_training=True, **SIMPLE_AUG)
    else:
        args = dict(base, is_training=True, **STRONG_AUG)
    args.update(overrides)
    if args.get("is_training"):
        args.pop("crop_pct", None)
        args.pop("crop_mode", None)
    return create_transform(**args)

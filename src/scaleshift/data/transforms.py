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

import torch.nn as nn
from timm.data import create_transform, resolve_data_config

from ..errors import ScaleshiftError
from ..profiles import input_size_of

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


def eval_transform_config(setting: str | None, model, input_size: int | None = None) -> dict:
    """The evaluation transform of a paper `setting` for `model` as the keyword arguments of
    timm's create_transform (JSON-safe): what an adapter records so that serving rebuilds the
    transform its run evaluated with (`transform_from_config`). setting=None: the backbone's
    own evaluation transform (resize by crop_pct, centre crop)."""
    if setting is not None and setting not in SETTINGS:
        raise ScaleshiftError(f"unknown transform setting {setting!r}; "
                              f"one of {', '.join(SETTINGS)}")
    cfg = resolve_config(model)
    size = cfg["input_size"] if input_size is None else (3, input_size, input_size)
    if input_size is None and isinstance(model, nn.Module):
        size = input_size_of(model)   # a model built with img_size=... keeps a 224 config
    record = dict(input_size=list(size), interpolation=cfg["interpolation"],
                  crop_pct=cfg["crop_pct"], crop_mode=cfg.get("crop_mode", "center"),
                  mean=list(cfg["mean"]), std=list(cfg["std"]))
    if setting == "vtab":
        # 'squash' with crop_pct 1: Resize((size, size)) then a no-op centre crop
        record.update(crop_pct=1.0, crop_mode="squash")
    return record


def transform_from_config(record: dict, **overrides):
    """The evaluation transform an `eval_transform_config` record describes."""
    try:
        return create_transform(**{**record, **overrides}, is_training=False)
    except (TypeError, ValueError, KeyError) as exc:
        raise ScaleshiftError(f"the recorded eval transform {record} cannot be rebuilt "
                              f"({type(exc).__name__}: {exc}); the adapter config was edited "
                              f"or damaged") from None


def build_transform(setting: str, model, is_training: bool, input_size: int | None = None,
                    **overrides):
    """The transform of a paper `setting` for `model` (see the module table). `input_size`
    overrides the backbone's (e.g. 32 for tiny test models); `overrides` go to create_transform."""
    if setting not in SETTINGS:
        raise ScaleshiftError(f"unknown transform setting {setting!r}; "
                              f"one of {', '.join(SETTINGS)}")
    base = eval_transform_config(setting, model, input_size)
    if setting == "vtab" or not is_training:
        args = dict(base, is_training=False)
    else:
        args = dict(base, is_training=True, **(SIMPLE_AUG if setting == "fgvc" else STRONG_AUG))
    args.update(overrides)
    if args.get("is_training"):
        args.pop("crop_pct", None)
        args.pop("crop_mode", None)
    return create_transform(**args)

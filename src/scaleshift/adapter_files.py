"""Adapter files, PEFT style: adapter_config.json + adapter_model.safetensors holding only what
training changed (the method's parameters, the head, and norm running statistics)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import ScaleshiftError
from .io import atomic_dir, file_sha256
from .methods import apply, config_of, plain_key
from .models import build_model, describe, identity_of

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "scaleshift-adapter"


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus the running statistics of norm layers (which training updates
    even when the norm's affine is frozen)."""
    state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            for buf_name in ("running_mean", "running_var"):
                buf = getattr(module, buf_name, None)
                if buf is not None:
                    state[f"{module_name}.{buf_name}"] = buf.detach()
    return state


def backbone_fingerprint(model: nn.Module) -> str:
    """sha256 over the frozen parameters (names without wrapper segments, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    frozen = sorted((plain_key(n), p) for n, p in model.named_parameters() if not p.requires_grad)
    for name, param in frozen:
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    config = config_of(model)
    if config is None:
        raise ScaleshiftError("save_adapter needs a model with a method applied "
                              "(scaleshift.apply(model, method=...))")
    state = {k: v.contiguous() for k, v in adapter_state(model).items()}
    identity = identity_of(model)
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        meta = dict(
            format=FORMAT, format_version=2, scaleshift_version=__version__,
            base_model=identity, model_name=identity["name"] if identity else None,
            method=config["method"], options=config["options"],
            num_classes=getattr(model, "num_classes", None),
            backbone_fingerprint=backbone_fingerprint(model),
            tensors={k: list(v.shape) for k, v in state.items()},
            weights_sha256=file_sha256(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_adapter_config(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ScaleshiftError(f"{path} not found: an adapter directory holds {CONFIG_NAME} "
                                  f"and {WEIGHTS_NAME} (written by scaleshift.save_adapter)")
    try:
        meta = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ScaleshiftError(f"{config_path} is not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ScaleshiftError(f"{config_path} is not a scaleshift adapter config "
                              f"(format={meta.get('format')!r})")
    missing = [k for k in ("method", "options", "num_classes", "backbone_fingerprint",
                           "weights_sha256") if k not in meta]
    if missing:
        raise ScaleshiftError(f"{config_path} lacks {missing}: the file is incomplete or was "
                              f"edited; re-save the adapter with scaleshift.save_adapter")
    if "base_model" not in meta:   # format 1: the name and kwargs only, no weights record
        meta["base_model"] = dict(name=meta.get("model_name"), architecture=meta.get("model_name"),
                                  kwargs=meta.get("model_kwargs", {}), num_classes=meta["num_classes"],
                                  source="unknown", tag=None, weights_file=None,
                                  weights_sha256=None, seed=None)
    return meta


def backbone_for(meta: dict, pretrained=None) -> nn.Module:
    """The backbone an adapter (its adapter_config.json, read) was trained on, rebuilt from the
    identity record it carries: same weights, class count and timm kwargs. `pretrained`: the
    weights file, when it has moved since training."""
    return build_model(meta["base_model"], meta["num_classes"], pretrained=pretrained)


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load an adapter onto `model`: a plain model gets the adapter's method applied first.
    Refuses another backbone, class count, method or options, and tampered weights."""
    meta, state = adapter_tensors(directory)
    trained_on, identity = meta["base_model"], identity_of(model)
    if identity and trained_on.get("architecture") and identity["architecture"] != trained_on["architecture"]:
        raise ScaleshiftError(f"adapter was trained on {trained_on['architecture']!r} but the model "
                              f"is {identity['architecture']!r}; create the model with that name")
    if identity and None not in (identity.get("kwargs"), trained_on.get("kwargs")) \
            and _architecture_kwargs(identity) != _architecture_kwargs(trained_on):
        raise ScaleshiftError(f"adapter was trained on {describe(trained_on)}, but the model was "
                              f"built with kwargs {identity['kwargs']}; build it with the same kwargs")
    if getattr(model, "num_classes", meta["num_classes"]) != meta["num_classes"]:
        raise ScaleshiftError(f"adapter has a {meta['num_classes']}-class head but the model has "
                              f"{model.num_classes} classes; create it with "
                              f"num_classes={meta['num_classes']}")
    config = config_of(model)
    if config is None:
        apply(model, meta["method"], **meta["options"])
    elif (config["method"], config["options"]) != (meta["method"], meta["options"]):
        raise ScaleshiftError(f"adapter is {meta['method']} {meta['options']} but the model has "
                              f"{config['method']} {config['options']} applied")
    if backbone_fingerprint(model) != meta["backbone_fingerprint"]:
        raise ScaleshiftError(f"the frozen backbone weights differ from the ones this adapter was "
                              f"trained on (fingerprint mismatch). The adapter's backbone: "
                              f"{describe(trained_on)}; this model: "
                              f"{describe(identity) if identity else 'unknown'}. Load those weights")
    expected = adapter_state(model)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ScaleshiftError(f"adapter tensors do not fit the model: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}")
    with torch.no_grad():
        for key, target in expected.items():
            if state[key].shape != target.shape:
                raise ScaleshiftError(f"adapter tensor {key} has shape {tuple(state[key].shape)}, "
                                      f"the model expects {tuple(target.shape)}")
        for key, target in expected.items():
            target.copy_(state[key])
    return model


def _architecture_kwargs(identity: dict) -> dict:
    """Constructor kwargs that shape the architecture (drop rates only matter in training)."""
    return {k: v for k, v in identity["kwargs"].items() if not k.startswith("drop")}


def adapter_tensors(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, its tensors) after verifying the weights' sha256: what the pure
    merge takes, with no model in sight."""
    meta = read_adapter_config(directory)
    weights_path = Path(directory) / WEIGHTS_NAME
    if file_sha256(weights_path) != meta["weights_sha256"]:
        raise ScaleshiftError(f"{weights_path} does not match the checksum in {CONFIG_NAME}: "
                              f"the file was changed or damaged; re-save the adapter")
    return meta, load_file(str(weights_path))

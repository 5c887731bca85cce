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
from .io import atomic_dir
from .methods import apply, config_of
from .models import model_name_of

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "scaleshift-adapter"


def _plain_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


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
    frozen = sorted((_plain_name(n), p) for n, p in model.named_parameters() if not p.requires_grad)
    for name, param in frozen:
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


def _jsonable(value):
    """timm kwargs as JSON (tuples become lists)."""
    return json.loads(json.dumps(value, default=list))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    config = config_of(model)
    if config is None:
        raise ScaleshiftError("save_adapter needs a model with a method applied "
                              "(scaleshift.apply(model, method=...))")
    state = {k: v.contiguous() for k, v in adapter_state(model).items()}
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        meta = dict(
            format=FORMAT, format_version=1, scaleshift_version=__version__,
            model_name=config["model_name"] or model_name_of(model),
            model_kwargs=_jsonable(config.get("model_kwargs", {})),
            method=config["method"], options=config["options"],
            num_classes=config["num_classes"],
            backbone_fingerprint=backbone_fingerprint(model),
            tensors={k: list(v.shape) for k, v in state.items()},
            weights_sha256=_file_sha256(tmp / WEIGHTS_NAME))
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
    return meta


def plain_model_for(meta: dict, pretrained=False) -> nn.Module:
    """The plain model an adapter (its adapter_config.json, read) was trained on: same model
    name, class count and timm kwargs; `pretrained` as for create_model."""
    from .models import create_model
    return create_model(meta["model_name"], num_classes=meta["num_classes"], pretrained=pretrained,
                        **meta.get("model_kwargs", {}))


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load an adapter onto `model`: a plain model gets the adapter's method applied first.
    Refuses another backbone, class count, method or options, and tampered weights."""
    directory = Path(directory)
    meta = read_adapter_config(directory)
    weights_path = directory / WEIGHTS_NAME
    if _file_sha256(weights_path) != meta.get("weights_sha256"):
        raise ScaleshiftError(f"{weights_path} does not match the checksum in {CONFIG_NAME}: "
                              f"the file was changed or damaged; re-save the adapter")
    name = model_name_of(model)
    if name and meta["model_name"] and name != meta["model_name"]:
        raise ScaleshiftError(f"adapter was trained on {meta['model_name']!r} but the model is "
                              f"{name!r}; create the model with that name")
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
        raise ScaleshiftError("the frozen backbone weights differ from the ones this adapter was "
                              "trained on (fingerprint mismatch); load the same pretrained weights")
    state = load_file(str(weights_path))
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

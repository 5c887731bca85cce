"""Reading files scaleshift did not just write: every one is hostile input.

One bounded reader per kind of file, each checking type, range and finiteness of every value
before anything is built from it:

    read_json(path, what)         a regular file, at most MAX_FILE_BYTES, nesting at most
                                  MAX_DEPTH, no NaN/Infinity, a JSON object
    read_yaml(text, where)        YAML through the safe loader, at most MAX_ALIASES aliases (an
                                  alias bomb expands to gigabytes from a few hundred bytes)
    load_tensors(path, what)      torch.load(weights_only=True) whose refusals (a pickle holding
                                  Python objects, a truncated zip) become one-line errors
    check_eval_transform(...)     a recorded eval transform: sizes, finite mean, positive std
    AdapterRecord                 an adapter's record (scaleshift_adapter.json or the
                                  "scaleshift" block of adapter_config.json), validated
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ScaleshiftError

MAX_FILE_BYTES = 64 << 20        # a record or recipe is kilobytes; a class list of 100k names fits
MAX_DEPTH = 32                   # scaleshift's records nest 4 deep
MAX_ALIASES = 100                # the packaged recipes use none
MAX_EXPANDED_VALUES = 100_000    # values of a recipe with its aliases written out
MAX_CLASSES = 1_000_000          # ImageNet-21k has 21,843; a head this wide is already 1e9 weights
MAX_INPUT_SIZE = 4096            # pixels per side of a model's input
MAX_SEED = 2**63 - 1             # torch.manual_seed takes a 64-bit seed
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def regular_file(path: str | os.PathLike, what: str, limit: int | None = None) -> Path:
    """`path` if it is a regular file (after symlinks) of at most `limit` bytes (None: any)."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError:
        raise ScaleshiftError(f"{what} {path} not found") from None
    if not stat.S_ISREG(info.st_mode):
        raise ScaleshiftError(f"{what} {path} is not a regular file (a directory, device or "
                              f"pipe); pass the file scaleshift wrote")
    if limit is not None and info.st_size > limit:
        raise ScaleshiftError(f"{what} {path} is {info.st_size} bytes, more than the "
                              f"{limit >> 20} MiB such a file can hold; it is not one "
                              f"scaleshift wrote")
    return path


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON `text` (strings skipped), counted
    without recursion, so that json.loads never meets a nesting it would recurse into."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str, where) -> object:
    if json_depth(text) > MAX_DEPTH:
        raise ScaleshiftError(f"{where} nests deeper than {MAX_DEPTH} levels; it is not a file "
                              f"scaleshift wrote (edited or damaged)")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:   # JSONDecodeError, NaN / Infinity, an int of too many digits
        raise ScaleshiftError(f"{where} is not valid JSON ({exc})") from None


def read_json(path: str | os.PathLike, what: str = "file") -> dict:
    """A JSON object from a regular file of bounded size and depth."""
    path = regular_file(path, what, MAX_FILE_BYTES)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ScaleshiftError(f"{what} {path} is not UTF-8 text") from None
    data = parse_json(text, path)
    if not isinstance(data, dict):
        raise ScaleshiftError(f"{what} {path} is not a JSON object")
    return data


def read_yaml(text: str, where) -> object:
    """YAML through the safe loader, refusing alias bombs before anything is expanded."""
    import yaml
    if len(text) > MAX_FILE_BYTES:
        raise ScaleshiftError(f"{where} is larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, yaml.SafeLoader))
        if aliases > MAX_ALIASES:
            raise ScaleshiftError(f"{where} uses {aliases} YAML aliases (*name), more than "
                                  f"{MAX_ALIASES}: aliases of aliases expand exponentially; "
                                  f"write the values out")
        data = yaml.safe_load(text)
        size = expanded_size(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ScaleshiftError(f"{where} is not valid YAML: {problem}{at}") from None
    except ValueError as exc:   # an integer of more digits than Python converts
        raise ScaleshiftError(f"{where} holds a value YAML cannot read ({exc}); write the value "
                              f"out as a normal number") from None
    except RecursionError:
        raise ScaleshiftError(f"{where} nests too deeply to be a recipe") from None
    if size > MAX_EXPANDED_VALUES:
        raise ScaleshiftError(f"{where} expands to {size:.3g} values through its YAML aliases "
                              f"(*name), more than {MAX_EXPANDED_VALUES}; write the values out")
    return data


def expanded_size(data) -> int:
    """How many values `data` holds once every alias is written out: a shared list counts
    each time it appears (memoised by identity, so counting itself stays cheap)."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        total = 1 + sum(size(child) for child in children)
        if isinstance(node, (dict, list)):
            sizes[id(node)] = total
        return total
    return size(data)


# ----------------------------------------------------------------------------- tensors
PICKLE_REFUSED = ("holds Python objects, not tensors; scaleshift loads tensors only "
                  "(torch.load with weights_only=True), so nothing in it was run")


def load_tensors(path: str | os.PathLike, what: str = "checkpoint", fix: str = ""):
    """torch.load(path, weights_only=True) with its refusals as one-line errors: a pickle that
    would build Python objects (whose code never runs), a truncated or foreign file."""
    import pickle

    import torch
    path = regular_file(path, what)
    fix = f"; {fix}" if fix else ""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ScaleshiftError(f"{what} {path} {PICKLE_REFUSED}{fix}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        if "weights_only" in str(exc):
            raise ScaleshiftError(f"{what} {path} {PICKLE_REFUSED}{fix}") from None
        raise ScaleshiftError(f"{what} {path} is truncated or not a PyTorch checkpoint "
                              f"({type(exc).__name__}: {str(exc)[:120]}){fix}") from None


# ----------------------------------------------------------------------------- values
def check_int(value, name: str, where, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ScaleshiftError(f"{where}: {name} must be an integer in {low}..{high}, got "
                              f"{_short(value)}")
    return value


def check_number(value, name: str, where, low: float, high: float, *, open_low=False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (low < value if open_low else low <= value) and value <= high)
    if not ok:
        raise ScaleshiftError(f"{where}: {name} must be a finite number in "
                              f"{'(' if open_low else '['}{low}, {high}], got {_short(value)}")
    return float(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos", "random")
CROP_MODES = ("center", "squash", "border")


def check_eval_transform(record, where) -> dict | None:
    """A recorded eval transform (timm create_transform kwargs) whose every value builds."""
    if record is None:
        return None
    if not isinstance(record, dict):
        raise ScaleshiftError(f"{where}: eval_transform must be a mapping, got {_short(record)}")
    unknown = set(record) - {"input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std"}
    if unknown:
        raise ScaleshiftError(f"{where}: eval_transform has unknown keys {sorted(unknown)}")
    size = record.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and size[0] == 3):
        raise ScaleshiftError(f"{where}: eval_transform.input_size must be [3, height, width], "
                              f"got {_short(size)}")
    for side in size[1:]:
        check_int(side, "eval_transform.input_size", where, 1, MAX_INPUT_SIZE)
    if record.get("interpolation", "bicubic") not in INTERPOLATIONS:
        raise ScaleshiftError(f"{where}: eval_transform.interpolation must be one of "
                              f"{', '.join(INTERPOLATIONS)}")
    if record.get("crop_mode", "center") not in CROP_MODES:
        raise ScaleshiftError(f"{where}: eval_transform.crop_mode must be one of {', '.join(CROP_MODES)}")
    if "crop_pct" in record:
        check_number(record["crop_pct"], "eval_transform.crop_pct", where, 0.05, 1.0)
    for key, low in (("mean", -10.0), ("std", 0.0)):
        values = record.get(key)
        if not (isinstance(values, list) and len(values) in (1, 3)):
            raise ScaleshiftError(f"{where}: eval_transform.{key} must be a list of 3 numbers, "
                                  f"got {_short(values)}")
        for value in values:
            check_number(value, f"eval_transform.{key}", where, low, 10.0, open_low=key == "std")
    return dict(record)


def check_input_size(value, what: str = "--input-size") -> int | None:
    return None if value is None else check_int(value, what, "input size", 8, MAX_INPUT_SIZE)


# ----------------------------------------------------------------------------- adapters
FORMAT = "scaleshift-adapter"
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class AdapterRecord:
    """scaleshift's record of an adapter, every field checked. `base_model` is the backbone's
    identity record (its kwargs checked against the constructor when the model is built)."""
    method: str
    options: dict
    num_classes: int
    class_names: tuple[str, ...] | None
    eval_transform: dict | None
    base_model: dict
    backbone_fingerprint: str
    weights_sha256: str
    loadable_by_peft: bool
    peft_only_tensors: tuple[str, ...]
    format_version: int

    @classmethod
    def from_raw(cls, meta: dict, where) -> "AdapterRecord":
        from .methods import methods
        if meta.get("format") != FORMAT:
            raise ScaleshiftError(f"{where}: not a scaleshift adapter record "
                                  f"(format={_short(meta.get('format'))})")
        missing = [k for k in ("method", "options", "num_classes", "backbone_fingerprint",
                               "weights_sha256") if k not in meta]
        if missing:
            raise ScaleshiftError(f"{where} lacks {missing}: the file is incomplete or was "
                                  f"edited; re-save the adapter with scaleshift.save_adapter")
        if meta["method"] not in methods():
            raise ScaleshiftError(f"{where}: method {_short(meta['method'])} is not one of "
                                  f"{', '.join(methods())}")
        if not isinstance(meta["options"], dict):
            raise ScaleshiftError(f"{where}: options must be a mapping")
        num_classes = check_int(meta["num_classes"], "num_classes", where, 1, MAX_CLASSES)
        names = meta.get("class_names")
        if names is not None:
            if not (isinstance(names, list) and len(names) == num_classes
                    and all(isinstance(n, str) and len(n) <= 1000 for n in names)):
                raise ScaleshiftError(f"{where}: class_names must be {num_classes} strings (one "
                                      f"per class of the head), got {_short(names)}")
            names = tuple(names)
        for key in ("backbone_fingerprint", "weights_sha256"):
            if not (isinstance(meta[key], str) and SHA256.fullmatch(meta[key])):
                raise ScaleshiftError(f"{where}: {key} must be a sha256 (64 hex digits)")
        base = meta.get("base_model")
        if base is None:   # format 1: the name and kwargs only, no weights record
            base = dict(name=meta.get("model_name"), architecture=meta.get("model_name"),
                        kwargs=meta.get("model_kwargs", {}), num_classes=num_classes,
                        source="unknown", tag=None, weights_file=None, weights_sha256=None, seed=None)
        from .identity import Identity
        base = Identity.from_dict(base, where).as_dict()
        if base.get("kwargs") and base.get("library") != "transformers":
            from .models import SOURCE_PREFIXES, check_kwargs_of, check_model_name
            if not base["name"].startswith(SOURCE_PREFIXES):
                check_model_name(base["name"])
            check_kwargs_of(base["name"], base["kwargs"], num_classes, f"{where}: base_model.kwargs")
        peft_only = meta.get("peft_only_tensors", [])
        if not (isinstance(peft_only, list) and all(isinstance(n, str) for n in peft_only)):
            raise ScaleshiftError(f"{where}: peft_only_tensors must be a list of tensor names")
        version = meta.get("format_version", 1)
        return cls(method=meta["method"], options=dict(meta["options"]), num_classes=num_classes,
                   class_names=names,
                   eval_transform=check_eval_transform(meta.get("eval_transform"), where),
                   base_model=base, backbone_fingerprint=meta["backbone_fingerprint"],
                   weights_sha256=meta["weights_sha256"],
                   loadable_by_peft=meta.get("loadable_by_peft") is True,
                   peft_only_tensors=tuple(peft_only),
                   format_version=check_int(version, "format_version", where, 1, 1000))

    def as_meta(self) -> dict:
        """The record as the dict the loaders take (class_names a list)."""
        return dict(format=FORMAT, format_version=self.format_version, method=self.method,
                    options=dict(self.options), num_classes=self.num_classes,
                    class_names=list(self.class_names) if self.class_names is not None else None,
                    eval_transform=self.eval_transform, base_model=dict(self.base_model),
                    backbone_fingerprint=self.backbone_fingerprint,
                    weights_sha256=self.weights_sha256, loadable_by_peft=self.loadable_by_peft,
                    peft_only_tensors=list(self.peft_only_tensors))


"""The one option grammar of every command: `key=value`, the value read as YAML (so 4 is an
int, 1e-3 a number, true a bool, [a, b] a list), dotted keys reaching into mappings
(`method_options.layers=4`, `model_kwargs.img_size=32`).

    scaleshift train builtin/digits_ssf --resume epochs=3 method_options.layers=2
    scaleshift params model=vit_base_patch16_224 method=ssf layers=4
"""
from __future__ import annotations

import argparse
import difflib
import re
from typing import Any

from .errors import ScaleshiftError
from .records import read_yaml

_ASSIGNMENT = re.compile(r"^[A-Za-z_][\w.-]*=")


def is_assignment(token: str) -> bool:
    return bool(_ASSIGNMENT.match(token))


# keys whose values are paths: taken as written, never read as YAML (a '#' or a newline in a
# folder name stays in it); pretrained=true/false still chooses timm's weights or none
PATH_KEYS = ("out_dir", "data_root", "pretrained", "out")


def parse_assignment(item: str) -> tuple[tuple[str, ...], Any]:
    """'a.b=1e-3' -> (('a', 'b'), '1e-3' as YAML reads it); a path key's value as written."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ScaleshiftError(f"{item!r} is not key=value (e.g. lr=1e-3 or method_options.layers=4)")
    if key.replace("-", "_") in PATH_KEYS:
        if key.replace("-", "_") == "pretrained" and raw.lower() in ("true", "false"):
            return ("pretrained",), raw.lower() == "true"
        return (key.replace("-", "_"),), raw
    value = read_yaml(raw, f"the value of {key}") if raw != "" else ""
    return tuple(part.replace("-", "_") for part in key.split(".")), value


def parse_assignments(items: list[str]) -> list[tuple[tuple[str, ...], Any]]:
    return [parse_assignment(item) for item in items]


def set_path(data: dict, path: tuple[str, ...], value: Any) -> None:
    """data[a][b] = value for path (a, b), creating or copying the mappings on the way."""
    for depth, key in enumerate(path[:-1]):
        inner = data.get(key)
        if inner is None:
            inner = {}
        elif not isinstance(inner, dict):
            raise ScaleshiftError(f"{'.'.join(path[:depth + 1])} is not a mapping; "
                                  f"use {'.'.join(path[:depth + 1])}=value")
        data[key] = inner = dict(inner)
        data = inner
    data[path[-1]] = value


def assign_flags(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 assignments: list[tuple[tuple[str, ...], Any]], rest: str | None = None) -> None:
    """Apply key=value assignments to a subcommand's parsed flags: `top_k=5` sets --top-k
    (typed and checked as the flag is), `model_kwargs.img_size=32` a key of a mapping flag.
    With `rest`, keys that are no flag go into the mapping args.<rest> (e.g. method options)."""
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    for path, value in assignments:
        action = actions.get(path[0])
        if action is None and path[0] != rest and isinstance(getattr(args, path[0], None), dict):
            mapping = dict(getattr(args, path[0]))   # a mapping with no flag (bench's model_kwargs)
            if len(path) > 1:
                set_path(mapping, path[1:], value)
            else:
                mapping = _mapping_value(path[0], value)
            setattr(args, path[0], mapping)
            continue
        if action is None:
            if rest is None:
                valid = ", ".join(sorted(actions)) or "none"
                close = difflib.get_close_matches(path[0], sorted(actions), n=3)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise ScaleshiftError(f"unknown option {'.'.join(path)!r}{hint} for "
                                      f"`{parser.prog}`; valid keys: {valid}")
            target = getattr(args, rest)
            set_path(target, path, value)
            continue
        if len(path) > 1:
            raise ScaleshiftError(f"{path[0]} is not a mapping; use {path[0]}=value")
        setattr(args, action.dest, _flag_value(action, value))


def _mapping_value(key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ScaleshiftError(f"{key} is a mapping: give {key}.KEY=VALUE or {key}={{KEY: VALUE}}")
    return value


def _flag_value(action: argparse.Action, value: Any) -> Any:
    key = action.dest
    if action.nargs == 0 and isinstance(action.const, bool):   # store_true / store_false
        if not isinstance(value, bool):
            raise ScaleshiftError(f"{key} takes true or false, got {value!r}")
        return value if action.const else not value
    if action.type is not None and value is not None and not isinstance(value, action.type):
        try:
            value = action.type(str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ScaleshiftError(f"{key} must be {getattr(action.type, '__name__', 'valid')}, "
                                  f"got {value!r}") from None
    if action.type is None and value is not None and not isinstance(value, str):
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise ScaleshiftError(f"{key} must be one of {list(action.choices)}, got {value!r}")
    return value

"""Optional dependencies. `import scaleshift` and training a timm model need only the core
dependencies of pyproject.toml; everything else belongs to one extra and is imported through
`require`, which turns a missing package into a ScaleshiftError naming the extra:

    onnx = require("onnx")                  # pip install 'scaleshift[onnx]'
    load_digits = require("sklearn.datasets", "the digits dataset").load_digits
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ScaleshiftError

# top-level module -> (extra, the name pip installs it by); pyproject.toml lists the same extras
EXTRAS = {
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnx", "onnxruntime"),
    "onnxscript": ("onnx", "onnxscript"),
    "peft": ("lora", "peft"),
    "skimage": ("data", "scikit-image"),
    "sklearn": ("data", "scikit-learn"),
    "scipy": ("data", "scipy"),
    "matplotlib": ("plots", "matplotlib"),
}


def require(module: str, purpose: str | None = None, *, extra: str | None = None) -> ModuleType:
    """Import `module` (dotted names work) or raise a ScaleshiftError that says which extra
    installs it. `purpose` says what needed it ("ONNX export"); `extra` overrides the table."""
    top = module.partition(".")[0]
    if top not in EXTRAS and extra is None:
        raise ValueError(f"{top!r} is not an optional dependency; add it to extras.EXTRAS")
    known_extra, pip_name = EXTRAS.get(top, (extra, top))
    extra = extra or known_extra
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ScaleshiftError(
            f"{purpose or module} needs the optional package {pip_name}, which is not installed "
            f"or does not import ({exc}). Install it with: pip install 'scaleshift[{extra}]' "
            f"(or pip install 'scaleshift[all]')") from exc

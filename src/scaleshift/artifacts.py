"""Any artifact scaleshift writes, loaded for `predict` and `eval`: a run folder, an adapter of
any method, a merged model (timm's folder or a bare .safetensors file) or an ONNX file. Each
gives a module (a batch of images -> logits), the eval transform it was evaluated with and its
class names. Weights are read without pickle (safetensors)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import timm
import torch
import torch.nn as nn

from .errors import ScaleshiftError

KINDS = "a run folder, an adapter folder, a merged timm folder, a merged .safetensors file or an .onnx file"


@dataclass
class Artifact:
    model: nn.Module                 # images (N, 3, H, W) -> logits (N, classes)
    transform: Callable              # PIL image -> tensor, as the artifact was evaluated
    class_names: list[str] | None
    kind: str
    run_config: object = None        # a run folder's RunConfig


class OnnxModule(nn.Module):
    """An onnxruntime session as a module (CPU), so that evaluate() takes it like any model."""

    def __init__(self, path: Path):
        super().__init__()
        from .extras import require
        onnxruntime = require("onnxruntime", "running an ONNX file")
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().numpy()
        return torch.from_numpy(np.asarray(self.session.run(None, {self.input_name: array})[0]))


def _transform(record: dict | None, model: nn.Module | None, input_size: int | None, where) -> Callable:
    """The recorded eval transform, else timm's data config of the model."""
    from .data.transforms import transform_from_config
    from .records import check_eval_transform, check_input_size
    input_size = check_input_size(input_size)
    size = {} if input_size is None else dict(input_size=(3, input_size, input_size))
    if record:
        return transform_from_config(check_eval_transform(record, where), **size)
    if model is None:
        raise ScaleshiftError(f"{where} records no eval transform; re-export it with this "
                              f"version of scaleshift")
    config = timm.data.resolve_data_config(model=model)
    return timm.data.create_transform(**{**config, **size}, is_training=False)


def _json_field(raw: str | None, what: str, where) -> object:
    from .records import parse_json
    return parse_json(raw, f"{where}: its {what}") if raw else None


def _class_names(raw: str | None, where, num_classes: int | None = None) -> list[str] | None:
    names = _json_field(raw, "class_names", where)
    if names is None:
        return None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)
            and (num_classes is None or len(names) == num_classes)):
        raise ScaleshiftError(f"{where}: its class_names are not {num_classes or 'a list of'} "
                              f"strings (one per class); the file was changed")
    return names


def _from_onnx(path: Path, input_size: int | None) -> Artifact:
    from .extras import require
    onnx = require("onnx", "reading an ONNX file's metadata")
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as exc:   # a damaged or foreign file: onnx raises several types
        raise ScaleshiftError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    names = _class_names(props.get("class_names"), path)
    transform = _transform(_json_field(props.get("eval_transform"), "eval_transform", path), None,
                           input_size, path)
    return Artifact(OnnxModule(path).eval(), transform, names, "onnx")


def _from_safetensors(path: Path, input_size: int | None) -> Artifact:
    from safetensors import safe_open
    from safetensors.torch import load_file
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception:   # not a safetensors file
        raise ScaleshiftError(f"{path} is not a readable safetensors file") from None
    if "timm_model" not in header:
        if (path.parent / "config.json").is_file() and path.name == "model.safetensors":
            raise ScaleshiftError(f"{path} is the weights file of the timm folder {path.parent}, "
                                  f"whose config.json names the architecture: pass the folder")
        raise ScaleshiftError(f"{path} is not a merged model scaleshift wrote (no timm_model in "
                              f"its header); pass {KINDS}")
    from .models import check_model_kwargs, check_model_name
    from .records import MAX_CLASSES, check_int
    kwargs = _json_field(header.get("timm_kwargs"), "timm_kwargs", path) or {}
    if not isinstance(kwargs, dict):
        raise ScaleshiftError(f"{path}: its timm_kwargs are not a mapping; the file was changed")
    check_model_name(header["timm_model"])
    raw_classes = str(header.get("num_classes", ""))
    num_classes = check_int(int(raw_classes) if raw_classes.isdigit() and len(raw_classes) < 10
                            else raw_classes, "num_classes", path, 1, MAX_CLASSES)
    check_model_kwargs(header["timm_model"].split(".")[0], num_classes, kwargs, f"{path}: timm_kwargs")
    model = timm.create_model(header["timm_model"], num_classes=num_classes, **kwargs)
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise ScaleshiftError(f"{path} does not fit {header['timm_model']}: {str(exc)[:200]}") from None
    transform = _transform(_json_field(header.get("eval_transform"), "eval_transform", path), model,
                           input_size, path)
    return Artifact(model.eval(), transform,
                    _class_names(header.get("class_names"), path, num_classes), "merged file")


def _from_timm_folder(directory: Path, input_size: int | None) -> Artifact:
    from .adapter_files import BLOCK
    from .models import check_model_kwargs, check_model_name
    from .records import MAX_CLASSES, check_int, read_json
    config = read_json(directory / "config.json", "timm config")
    if not isinstance(config.get("architecture"), str):
        raise ScaleshiftError(f"{directory} is not a timm model folder (config.json names no "
                              f"architecture); pass {KINDS}")
    if not (directory / "model.safetensors").is_file():
        raise ScaleshiftError(f"{directory} has no model.safetensors; scaleshift reads timm "
                              f"folders' weights from safetensors only")
    check_model_name(config["architecture"])
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise ScaleshiftError(f"{directory / 'config.json'}: model_args is not a mapping")
    classes = check_int(config.get("num_classes", 1000), "num_classes", directory / "config.json",
                        0, MAX_CLASSES)
    check_model_kwargs(config["architecture"], classes,
                       {k: v for k, v in model_args.items() if k != "num_classes"},
                       f"{directory / 'config.json'}: model_args")
    try:
        model = timm.create_model(f"local-dir:{directory}", pretrained=True)
    except Exception as exc:   # timm raises several types for a bad folder
        raise ScaleshiftError(f"timm could not load {directory}: {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from None
    record = config.get(BLOCK) if isinstance(config.get(BLOCK), dict) else {}
    names = config.get("label_names")
    names = names if isinstance(names, list) and len(names) == classes \
        and all(isinstance(n, str) for n in names) else None
    return Artifact(model.eval(), _transform(record.get("eval_transform"), model, input_size, directory),
                    names, "merged folder")


def load_artifact(source: str | os.PathLike, input_size: int | None = None,
                  pretrained: str | os.PathLike | None = None) -> Artifact:
    """The artifact at `source` (a local path, or a Hub repo id of a run or adapter).
    `pretrained`: a run's or adapter's backbone weights file, when it has moved since training
    (a merged model or ONNX file holds its weights itself)."""
    from .adapter_files import (CONFIG_NAME, adapter_tensors, backbone_for, fit_adapter,
                                resolve_dir, serving_transform)
    from .data import build_transform
    from .records import check_input_size
    from .runs import ADAPTER, CONFIG, read_config
    input_size = check_input_size(input_size)
    path = Path(source)
    merged = path.is_file() and path.suffix.lower() in (".onnx", ".safetensors")
    if pretrained is not None and (merged or (path.is_dir() and not (path / CONFIG).is_file()
                                              and not (path / CONFIG_NAME).is_file())):
        raise ScaleshiftError(f"{source} is not a run or an adapter: it holds its weights itself, "
                              f"so it takes no backbone weights file; drop --pretrained")
    if path.is_file() and path.suffix.lower() == ".onnx":
        return _from_onnx(path, input_size)
    if path.is_file() and path.suffix.lower() == ".safetensors":
        return _from_safetensors(path, input_size)
    directory = resolve_dir(source, "artifact")
    if not directory.exists():
        raise ScaleshiftError(f"{source} not found; pass {KINDS}")
    if (directory / CONFIG).is_file():   # each file of the run or adapter is read once
        cfg = read_config(directory)
        meta, state = adapter_tensors(directory / ADAPTER)
        model = fit_adapter(backbone_for(meta, pretrained), meta, state)
        size = cfg.input_size if input_size is None else input_size
        return Artifact(model.eval(), build_transform(cfg.augment, model, False, size),
                        meta.get("class_names"), "run", cfg)
    if (directory / CONFIG_NAME).is_file():
        meta, state = adapter_tensors(directory)
        model = fit_adapter(backbone_for(meta, pretrained), meta, state).eval()
        return Artifact(model, serving_transform(meta, model, input_size), meta.get("class_names"),
                        f"{meta['method']} adapter")
    if (directory / "config.json").is_file():
        return _from_timm_folder(directory, input_size)
    raise ScaleshiftError(f"{source} is not an artifact scaleshift reads; pass {KINDS}")


def image_files(sources: list[str]) -> list[Path]:
    """Image files as given, and every image file under a given folder (sorted)."""
    from .data.base import IMAGE_EXTENSIONS
    out = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ScaleshiftError(f"{path} holds no image files ({' '.join(sorted(IMAGE_EXTENSIONS))})")
            out += found
        elif path.is_file():
            out.append(path)
        elif path.is_symlink():
            raise ScaleshiftError(f"image {path} is a symbolic link to nothing (a missing target or "
                                  f"a loop); pass the image file itself")
        elif path.exists():
            raise ScaleshiftError(f"{path} is neither an image file nor a folder (a pipe, socket or "
                                  f"device); pass image files or folders of them")
        else:
            raise ScaleshiftError(f"image {path} not found; pass image files or folders of them")
    return out


@torch.no_grad()
def predict(artifact: Artifact, paths: list[Path], top_k: int, device: torch.device,
            batch_size: int = 32) -> list[dict]:
    """Top-k (label, index, p) per image, through the artifact's own eval transform."""
    from .data.images import read_image_for_predict
    model = artifact.model if isinstance(artifact.model, OnnxModule) else artifact.model.to(device)
    rows = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batch = torch.stack([artifact.transform(read_image_for_predict(p)) for p in chunk])
        logits = model(batch if isinstance(model, OnnxModule) else batch.to(device)).float().cpu()
        for path, probs in zip(chunk, logits.softmax(1)):
            top = probs.topk(min(top_k, len(probs)))
            names = artifact.class_names
            rows.append(dict(image=str(path), top=[
                dict(label=names[c] if names and c < len(names) else str(c), index=c,
                     p=round(float(p), 4)) for p, c in zip(top.values, top.indices.tolist())]))
    return rows


def format_table(rows: list[dict]) -> str:
    width = max([len("image")] + [len(r["image"]) for r in rows])
    lines = [f"{'image':{width}}  top-1 (p)  then"]
    for r in rows:
        first, rest = r["top"][0], r["top"][1:]
        lines.append(f"{r['image']:{width}}  {first['label']} ({first['p']:.3f})  "
                     + "  ".join(f"{t['label']} ({t['p']:.3f})" for t in rest))
    return "\n".join(line.rstrip() for line in lines)


def format_csv(rows: list[dict]) -> str:
    import csv
    import io
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    tasks = any("task" in r for r in rows)   # predict --adapters: one block per task
    writer.writerow(["image", *(["task"] if tasks else []), "rank", "label", "index", "p"])
    for r in rows:
        for rank, t in enumerate(r["top"], start=1):
            writer.writerow([r["image"], *([r["task"]] if tasks else []), rank, t["label"], t["index"], t["p"]])
    return text.getvalue().rstrip("\n")

"""Deployment: merged plain weights (timm's folder or a bare safetensors file) and ONNX
graphs, each checked on export.

    scaleshift export runs/digits_ssf --format timm          # timm.create_model("local-dir:...")
    scaleshift export runs/digits_ssf --format safetensors   # loads with timm alone, strict
    scaleshift export runs/digits_ssf --format onnx          # op counts == the plain backbone's

Every export carries the class names and the eval transform: timm's config.json (label_names,
pretrained_cfg), the safetensors header, the ONNX graph's metadata_props. An --out that exists
is refused; with --overwrite it is replaced only when scaleshift wrote it, a user's file never.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn

from .adapter_files import BLOCK, resolve_dir
from .errors import ScaleshiftError
from .extras import require
from .io import atomic_dir, atomic_path, save_safetensors, write_json
from .merge import assign_state
from .models import identity_of, plain_model
from .profiles import input_size_of
from .runs import load_run_record, merged_state

TIMM_CONFIG, TIMM_WEIGHTS = "config.json", "model.safetensors"   # timm's folder format


def _default_out(run_dir, out, name: str) -> Path:
    """`out`, or `name` inside the run directory, which must then be a local one. A file
    export keeps its format's suffix: `eval` and `predict` recognise the file by it."""
    if out is not None:
        suffix = Path(name).suffix
        if suffix and Path(out).suffix.lower() != suffix:
            raise ScaleshiftError(f"--out {out}: this export is a {suffix} file, and scaleshift "
                                  f"eval / predict recognise it by that suffix; pass --out "
                                  f"{Path(out).with_suffix(suffix)} (nothing was written)")
        return Path(out)
    if resolve_dir(run_dir, "run") != Path(run_dir):
        raise ScaleshiftError(f"{run_dir} is a Hub repo (read from the Hub cache); pass --out "
                              f"to say where the export goes")
    return Path(run_dir) / name


def _written_by_scaleshift_config(out: Path) -> bool:
    """Whether the folder's timm config.json carries scaleshift's record."""
    try:
        return BLOCK in json.loads((out / TIMM_CONFIG).read_text())
    except Exception:   # unreadable, foreign: not ours
        return False


def _written_by_scaleshift(out: Path) -> bool:
    """Whether `out` is an export scaleshift wrote: its record in timm's config.json, in the
    ONNX graph's metadata_props, in the safetensors header; or an ONNX check report."""
    try:
        if out.is_dir():
            return (_written_by_scaleshift_config(out)
                    and {p.name for p in out.iterdir()} <= {TIMM_CONFIG, TIMM_WEIGHTS})
        if out.suffix == ".onnx":
            onnx = require("onnx", "ONNX export")
            model = onnx.load(str(out), load_external_data=False)
            return any(p.key == BLOCK for p in model.metadata_props)
        if out.suffix == ".json":
            return {"op_counts", "same_ops_as_plain", "parity"} <= set(json.loads(out.read_text()))
        from safetensors import safe_open
        with safe_open(str(out), framework="pt") as f:
            return {"method", "timm_model"} <= set(f.metadata() or {})
    except Exception:   # unreadable, foreign: not ours
        return False


def _what_is_there(out: Path) -> str:
    """Why an existing `out` is not an export scaleshift may replace, in words."""
    from .adapter_files import CONFIG_NAME, foreign_files
    from .runs import is_run_dir
    if out.is_dir():
        if is_run_dir(out):
            return "is a run folder"
        if (out / CONFIG_NAME).is_file() and not foreign_files(out):
            return "is an adapter folder, not a merged export"
        extra = sorted(p.name for p in out.iterdir() if p.name not in (TIMM_CONFIG, TIMM_WEIGHTS))
        if extra and (out / TIMM_CONFIG).is_file() and _written_by_scaleshift_config(out):
            shown = ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else "")
            return (f"is a merged folder scaleshift wrote, but it now holds {shown} as well, which "
                    f"replacing it would delete")
    return "exists and was not written by scaleshift"


def check_target(out: Path, overwrite: bool) -> None:
    """An existing file or non-empty folder at `out` is refused; with --overwrite it is
    replaced only when scaleshift wrote it. A user's file is never replaced."""
    if out.is_symlink() and not out.exists():   # a dangling link is the user's, never replaced
        raise ScaleshiftError(f"{out} is a symbolic link to a missing file; it is never replaced: "
                              f"pass another --out (nothing was written)")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not _written_by_scaleshift(out):
        raise ScaleshiftError(f"{out} {_what_is_there(out)}; it is never replaced: pass another "
                              f"--out (nothing was written)")
    if not overwrite:
        raise ScaleshiftError(f"{out} exists (an earlier export); pass --overwrite to replace it "
                              f"or another --out (nothing was written)")


def export_record(meta: dict) -> dict:
    """What every export carries besides the weights: the class names, the eval transform and
    where the weights came from (the adapter's record)."""
    identity = meta["base_model"]
    return dict(class_names=meta.get("class_names"), eval_transform=meta.get("eval_transform"),
                architecture=identity["architecture"], kwargs=identity["kwargs"],
                num_classes=meta["num_classes"], method=meta["method"], base_model=identity)


def export_timm(run_dir: str | Path, out: str | Path | None = None, weights: str | None = None,
                overwrite: bool = False, pretrained: str | os.PathLike | None = None) -> dict:
    """The merged run in timm's folder format (timm's own save_config_for_hf): config.json
    with the architecture, num_classes, label_names, model_args and a pretrained_cfg holding the
    eval transform, plus model.safetensors; `timm.create_model("local-dir:OUT")` loads it."""
    from timm.models._hub import save_config_for_hf
    _, meta, state = merged_state(run_dir, weights, pretrained)
    out = _default_out(run_dir, out, "merged")
    check_target(out, overwrite)
    identity = meta["base_model"]
    if identity.get("library") == "transformers":
        raise ScaleshiftError("timm's folder format holds timm models; a transformers model's "
                              "merged form is written by its save_pretrained")
    with torch.device("meta"):   # the merged tensors themselves, no second copy
        plain = plain_model(identity, meta["num_classes"])
    assign_state(plain, state)                       # strict: the merged file is the plain architecture
    record = export_record(meta)
    transform = record["eval_transform"] or {}
    data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in transform.items()}
    model_config = {BLOCK: record}
    if record["class_names"]:
        model_config["label_names"] = record["class_names"]
    with atomic_dir(out) as tmp:
        save_safetensors({k: v.contiguous() for k, v in plain.state_dict().items()},
                         tmp / TIMM_WEIGHTS, {"format": "pt"})
        save_config_for_hf(plain, str(tmp / TIMM_CONFIG), model_config=model_config,
                           model_args=identity["kwargs"] or None, data_config=data_config)
    return dict(path=str(out), files=[TIMM_CONFIG, TIMM_WEIGHTS], tensors=len(state),
                load_with=f'timm.create_model("local-dir:{out}", pretrained=True)', strict_load=True)


def _input(model: nn.Module, cfg, batch: int = 1) -> torch.Tensor:
    channels, height, width = input_size_of(model)
    size = cfg.input_size
    return torch.randn(batch, channels, size or height, size or width,
                       generator=torch.Generator().manual_seed(0))


def export_safetensors(run_dir: str | Path, out: str | Path | None = None, weights: str | None = None,
                overwrite: bool = False, pretrained: str | os.PathLike | None = None) -> dict:
    """The run's adapter folded into its backbone's weights by the pure merge, saved as the
    plain timm architecture's state dict (checked with a strict load)."""
    _, meta, state = merged_state(run_dir, weights, pretrained)
    out = _default_out(run_dir, out, "merged.safetensors")
    check_target(out, overwrite)
    state = {k: v.contiguous() for k, v in state.items()}
    identity = meta["base_model"]
    with torch.device("meta"):   # the check holds the merged tensors themselves, no second copy
        plain = plain_model(identity, meta["num_classes"])
    assign_state(plain, state)                       # strict: the merged file is the plain architecture
    header = dict(timm_model=identity["architecture"], timm_kwargs=json.dumps(identity["kwargs"]),
                  num_classes=str(meta["num_classes"]), method=meta["method"],
                  base_model=json.dumps(identity),
                  class_names=json.dumps(meta.get("class_names")),
                  eval_transform=json.dumps(meta.get("eval_transform")))
    save_safetensors(state, out, header)
    return dict(path=str(out), tensors=len(state), bytes=out.stat().st_size, strict_load=True)


def onnx_op_counts(path: Path) -> dict[str, int]:
    onnx = require("onnx", "ONNX export")
    graph = onnx.load(str(path)).graph
    return dict(sorted(Counter(node.op_type for node in graph.node).items()))


def _to_onnx(model: nn.Module, x: torch.Tensor, path: Path, record: dict | None = None) -> None:
    """`record`: written into the graph's metadata_props, one JSON value per key (class_names,
    eval_transform, ...) and the whole record under "scaleshift"."""
    model.eval()
    with atomic_path(path) as tmp:
        torch.onnx.export(model, (x,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
        if record is not None:
            onnx = require("onnx", "ONNX export")
            graph = onnx.load(str(tmp))
            props = {k: json.dumps(v) for k, v in record.items()}
            onnx.helper.set_model_props(graph, {**props, BLOCK: json.dumps(record)})
            onnx.save(graph, str(tmp))


def export_onnx(run_dir: str | Path, out: str | Path | None = None, tolerance: float = 1e-4,
                weights: str | None = None, overwrite: bool = False,
                pretrained: str | os.PathLike | None = None) -> dict:
    """Merged model -> ONNX with a dynamic batch axis; checks that its operator counts equal
    the plain backbone's export and that onnxruntime reproduces PyTorch within `tolerance` at
    batch 1 and batch 8."""
    for module in ("onnx", "onnxscript"):   # the exporter's and the op count's
        require(module, "ONNX export")
    onnxruntime = require("onnxruntime", "the ONNX parity check")
    cfg, meta, merged = load_run_record(run_dir, merged=True, weights=weights, pretrained=pretrained)
    out = _default_out(run_dir, out, "merged.onnx")
    for target in (out, out.with_suffix(".json")):   # the graph and its check report
        check_target(target, overwrite)
    x = _input(merged, cfg)
    _to_onnx(merged, x, out, export_record(meta))
    # the plain timm architecture with the same weights (the exporter folds identical
    # initializers into Identity nodes, so the reference must hold the same values)
    plain = plain_model(identity_of(merged), merged.num_classes)
    plain.load_state_dict(merged.state_dict(), strict=True)
    with tempfile.TemporaryDirectory() as scratch:   # nothing of it next to the user's files
        plain_path = Path(scratch) / "plain_reference.onnx"
        _to_onnx(plain, x, plain_path)
        ops, plain_ops = onnx_op_counts(out), onnx_op_counts(plain_path)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    diffs = {}
    for batch in (1, 8):
        images = _input(merged, cfg, batch)
        with torch.no_grad():
            reference = merged.eval()(images).numpy()
        got = session.run(None, {"images": images.numpy()})[0]
        diffs[batch] = float(abs(got - reference).max()) if got.shape == reference.shape else float("inf")
    diff = max(diffs.values())
    report = dict(path=str(out), bytes=out.stat().st_size, op_counts=ops, plain_op_counts=plain_ops,
                  same_ops_as_plain=ops == plain_ops, max_abs_diff_vs_torch=diff,
                  max_abs_diff_by_batch=diffs, dynamic_batch=True, parity=diff <= tolerance)
    write_json(out.with_suffix(".json"), report)
    if not report["same_ops_as_plain"] or not report["parity"]:
        raise ScaleshiftError(f"ONNX export check failed: same ops as plain "
                              f"{report['same_ops_as_plain']}, max diff {diff:.2e}; see "
                              f"{out.with_suffix('.json')}")
    return report

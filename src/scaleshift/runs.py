"""Finished runs: read a run directory, rebuild its model, evaluate it, merge it.

A run directory (written by `scaleshift train`, see engine.py) holds:

    config.yaml      the resolved RunConfig
    results.json     top-1 / top-5 per protocol, params, time, memory, versions, model identity
    log.jsonl/.csv   one row per epoch
    checkpoint.pt    everything needed to resume
    adapter/         adapter_config.json (with the backbone's identity) + adapter_model.safetensors

Nothing here imports the training loop: merging, exporting or evaluating a run needs only its
files, the data and the backbone its adapter names.
"""
from __future__ import annotations

import os
import platform
from contextlib import nullcontext
from pathlib import Path

import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from .adapter_files import adapter_tensors, backbone_for, check_adapter_fits, fit_adapter, resolve_dir
from .artifacts import KINDS, OnnxModule, load_artifact
from .config import RunConfig, make_config
from .data import build_dataset, build_transform, get_dataset_spec
from .errors import ScaleshiftError
from .merge import merge, merge_state
from .progress import progress
from .version import __version__

CONFIG = "config.yaml"
RESULTS = "results.json"
ADAPTER = "adapter"            # the weights behind the reported number
NAMED = "adapters"             # adapters/<name>: the other weights (final, best, selected, ...)
CHECKPOINT = "checkpoint.pt"
SNAPSHOTS = "snapshots"        # snapshots/<name>.pt: trainable state of the selected / best epoch
MARKER = ".scaleshift-run"     # written first into every run directory scaleshift creates
LOCK = ".lock"


def is_run_dir(path: str | Path) -> bool:
    """A directory scaleshift created for a run (its marker, or the files of an older run)."""
    path = Path(path)
    return (path / MARKER).is_file() or ((path / CONFIG).is_file() and (path / CHECKPOINT).is_file())


def weights_dir(run_dir: str | Path, weights: str | None = None) -> Path:
    """The adapter directory of a run's weights: the reported ones by default, or by name
    (final, selected, best, final_without_ema), as results.json lists them."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS).is_file() and not (run_dir / ADAPTER).is_dir():
        raise ScaleshiftError(unfinished(run_dir))
    if weights in (None, "reported"):
        return run_dir / ADAPTER
    from .records import read_json
    results = read_json(run_dir / RESULTS, "run results") if (run_dir / RESULTS).exists() else {}
    named = results.get("weights", {})
    if not isinstance(named, dict) or not all(isinstance(v, str) for v in named.values()):
        raise ScaleshiftError(f"{run_dir / RESULTS}: its weights must map names to adapter "
                              f"folders; the file was edited")
    if weights not in named:
        raise ScaleshiftError(f"{run_dir} has no weights named {weights!r}; it has "
                              f"{', '.join(sorted(named)) or 'only the reported ones'}")
    folder = Path(named[weights])
    if folder.is_absolute() or ".." in folder.parts:
        raise ScaleshiftError(f"{run_dir / RESULTS}: weights {weights!r} points at {folder}, "
                              f"outside the run folder; the file was edited")
    return run_dir / folder


def training_pid(run_dir: Path) -> str | None:
    """The PID written in the run's lock file while a process holds the lock, else None."""
    import fcntl
    try:
        with open(run_dir / LOCK) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return lock.read().strip() or "another process"
    except OSError:
        pass
    return None


def unfinished(run_dir: Path) -> str:
    """What to say about a run folder whose training has not finished (no results, no adapter)."""
    pid = training_pid(run_dir)
    if pid is not None:
        return f"{run_dir} is still training (PID {pid}); wait for it to finish"
    command = f"scaleshift train {run_dir / CONFIG} out_dir={run_dir}"
    resume = (f"finish it with `{command} --resume`" if (run_dir / CHECKPOINT).is_file() else
              f"it has no checkpoint yet: train it again with `{command}`")
    return f"{run_dir} is an unfinished run (no {RESULTS}, no {ADAPTER}/): {resume}"


def read_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ScaleshiftError(f"{run_dir} is not a run directory (no {CONFIG}); "
                              f"pass the out_dir of `scaleshift train`")
    from .records import MAX_FILE_BYTES, read_yaml, regular_file
    path = regular_file(run_dir / CONFIG, "run config", MAX_FILE_BYTES)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ScaleshiftError(f"{path} is not UTF-8 text; the file was damaged") from None
    data = read_yaml(text, path)
    if not isinstance(data, dict):
        raise ScaleshiftError(f"{path} is not a mapping of config keys; the file was edited")
    try:
        return make_config(data)
    except ScaleshiftError as exc:
        raise ScaleshiftError(f"{path} does not hold a valid run config (edited, or written by "
                              f"another version of scaleshift): {exc}") from None


def dataset_classes(cfg: RunConfig) -> int:
    spec = get_dataset_spec(cfg.dataset)
    if spec.num_classes is not None:
        return spec.num_classes
    dataset = build_dataset(cfg.dataset, root=cfg.data_root, split=cfg.train_split,
                            **cfg.dataset_options)
    return class_count(dataset)


def class_count(dataset: Dataset) -> int:
    """How many classes a built dataset has (built-in tasks name none, so no `classes` list)."""
    return dataset.num_classes if dataset.classes is None else len(dataset.classes)


def load_run(run_dir: str | Path, merged: bool = False, weights: str | None = None,
             pretrained: str | os.PathLike | None = None) -> tuple[RunConfig, nn.Module]:
    """A finished run's config and model: the backbone its adapter names, rebuilt from the
    adapter's identity record, with the adapter loaded (merged on request). `weights`: the
    reported ones by default, or another set by name. `run_dir`: a directory or a Hub repo id.
    `pretrained`: the backbone's weights file, when it has moved since training."""
    cfg, _, model = load_run_record(run_dir, merged, weights, pretrained)
    return cfg, model


def load_run_record(run_dir: str | Path, merged: bool = False, weights: str | None = None,
                    pretrained: str | os.PathLike | None = None) -> tuple[RunConfig, dict, nn.Module]:
    """load_run, and the adapter's record as read (each file of the run read once)."""
    run_dir = resolve_dir(run_dir, "run")
    cfg = read_config(run_dir)
    meta, state = adapter_tensors(weights_dir(run_dir, weights))
    model = fit_adapter(backbone_for(meta, pretrained), meta, state)
    return cfg, meta, (merge(model) if merged else model)


def merged_state(run_dir: str | Path, weights: str | None = None,
                 pretrained: str | os.PathLike | None = None
                 ) -> tuple[RunConfig, dict, dict[str, torch.Tensor]]:
    """(config, adapter meta, the plain merged state dict) of a run, by the pure merge: the
    backbone's state dict + the adapter's tensors; no method is applied to any model."""
    run_dir = resolve_dir(run_dir, "run")
    cfg = read_config(run_dir)
    meta, trained = adapter_tensors(weights_dir(run_dir, weights))
    check_adapter_fits(meta, trained)
    backbone = backbone_for(meta, pretrained)
    state, non_mergeable = merge_state(meta["method"], backbone.state_dict(), trained, meta["options"])
    if non_mergeable:
        raise ScaleshiftError(f"{run_dir}: a {meta['method']} adapter does not fold into the plain "
                              f"architecture ({non_mergeable[0]['module']}: "
                              f"{non_mergeable[0]['reason']}); evaluate or serve it unmerged")
    return cfg, meta, state


def has_native_bf16(device: torch.device, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether `device` multiplies bf16 matrices in hardware: a CUDA GPU with bf16 support, or
    a CPU with AVX512-BF16 or AMX. Without it bf16 autocast is emulated and slower than fp32
    (5-7x on an AVX2 CPU, measured: README, Cost and analysis)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_extensions(cpuinfo)))


def resolve_precision(precision: str, device: torch.device) -> str:
    """precision=auto: bf16 autocast where the hardware has bf16, fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if has_native_bf16(device) else "fp32"


def autocast_for(precision: str, device: torch.device):
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise ScaleshiftError("precision=fp16 needs CUDA; use precision=bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def all_reduce_sum(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(values)
    return values


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device, autocast, world: int = 1,
             desc: str = "evaluate") -> dict:
    """Loss, top-1 and top-5 over a loader (summed across processes under torchrun)."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)    # loss sum, top-1 hits, top-5 hits, count
    for images, targets in progress(loader, desc):
        images, targets = images.to(device), torch.as_tensor(targets).to(device)
        with autocast():
            logits = model(images).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        totals += torch.tensor([F.cross_entropy(logits, targets, reduction="sum").item(),
                                (top[:, 0] == targets).sum().item(),
                                (top == targets[:, None]).any(1).sum().item(), len(targets)],
                               dtype=torch.float64)
    totals = all_reduce_sum(totals, world)
    count = max(totals[3].item(), 1)
    return dict(loss=totals[0].item() / count, top1=100 * totals[1].item() / count,
                top5=100 * totals[2].item() / count, count=int(totals[3].item()))


def eval_dataset(cfg: RunConfig, model: nn.Module, split: str) -> Dataset:
    return build_dataset(cfg.dataset, root=cfg.data_root, split=split,
                         transform=build_transform(cfg.augment, model, False, cfg.input_size),
                         **cfg.dataset_options)


def _check_classes(dataset: Dataset, name: str, classes: int | None, what) -> None:
    if classes is not None and class_count(dataset) != classes:
        raise ScaleshiftError(f"{name} has {class_count(dataset)} classes but {what} has "
                              f"{classes}; evaluate it on a dataset with the classes it was trained on")


def _check_data_root(data_root: str | None) -> None:
    if data_root is not None and not Path(data_root).is_dir():
        raise ScaleshiftError(f"data_root {data_root} is not an existing folder; pass the "
                              f"dataset's folder (layout: `scaleshift datasets`)")


def evaluate_run(run_dir: str | Path, merged: bool = False, split: str | None = None,
                 weights: str | None = None, device: str = "cpu", dataset: str | None = None,
                 data_root: str | None = None, pretrained: str | os.PathLike | None = None) -> dict:
    """Rebuild a finished run's model from its adapter (merged or not) and evaluate it, on the
    run's data or on `dataset` / `data_root` (the run's transform either way)."""
    import dataclasses
    _check_data_root(data_root)
    cfg, model = load_run(run_dir, merged, weights, pretrained)
    if dataset is not None or data_root is not None:
        cfg = dataclasses.replace(cfg, dataset=dataset or cfg.dataset,
                                  data_root=cfg.data_root if data_root is None else data_root,
                                  dataset_options={} if dataset else cfg.dataset_options)
    own_test = split is None and dataset is None and data_root is None
    split = split or cfg.test_split
    if split is None:
        raise ScaleshiftError(f"{run_dir} has no test split; pass --split NAME")
    data = eval_dataset(cfg, model, split)
    _check_classes(data, cfg.dataset, getattr(model, "num_classes", None), f"the run {run_dir}")
    if own_test and cfg.test_limit is not None and cfg.test_limit < len(data):
        data = Subset(data, range(cfg.test_limit))   # the images the run's own test top-1 used
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=False)
    target = parse_device(device)
    return evaluate(model.to(target), loader, target, autocast_for(cfg.precision, target))


def evaluate_artifact(source: str | Path, dataset: str | None, data_root: str | None = None,
                      split: str | None = None, device: str = "cpu", batch_size: int = 32,
                      pretrained: str | os.PathLike | None = None) -> dict:
    """Evaluate any artifact (an adapter, a merged folder or file, an ONNX file) on `dataset`
    through its own recorded eval transform."""
    if not Path(source).exists():
        raise ScaleshiftError(f"{source} not found; pass {KINDS}")
    if dataset is None:
        raise ScaleshiftError(f"{source} is not a run folder, so it names no data: pass "
                              f"dataset=NAME (and data_root=FOLDER, split=NAME) to evaluate it")
    _check_data_root(data_root)
    artifact = load_artifact(source, pretrained=pretrained)
    data = build_dataset(dataset, root=data_root, split=split or "test", transform=artifact.transform)
    classes = len(artifact.class_names) if artifact.class_names else getattr(artifact.model, "num_classes", None)
    _check_classes(data, dataset, classes, source)
    target = torch.device("cpu") if isinstance(artifact.model, OnnxModule) else parse_device(device)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    return evaluate(artifact.model.to(target), loader, target, nullcontext)


def parse_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ScaleshiftError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScaleshiftError(f"device {name} asked for, but no CUDA device is available; use cpu")
    if device.type not in ("cpu", "cuda"):
        raise ScaleshiftError(f"device {name!r} is not supported; use cpu or cuda")
    return device


def machine_info() -> dict:
    """What a result records about where it was measured. The CPU's vector extensions are part
    of it because oneDNN and MKL pick their kernels by them (forcing AVX2 on an AVX-512 CPU
    changes the bits of a gradient), and the rounding differences compound over a training
    run: the same seed can give accuracies a point or two apart on different CPUs."""
    return dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                scaleshift=__version__, platform=platform.platform(), processor=platform.machine(),
                cpus=os.cpu_count(), threads=torch.get_num_threads(),
                cpu_capability=torch.backends.cpu.get_cpu_capability(),
                cpu_extensions=cpu_extensions(),
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def cpu_extensions(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The vector and matrix extensions the kernels choose between that this CPU has (Linux)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path(cpuinfo).read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                        "amx_bf16") if f in flags]

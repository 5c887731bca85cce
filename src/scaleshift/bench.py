"""`scaleshift bench`: training and inference cost of every method on one backbone (paper Fig. 3).

Time: all variants live in one process; each round runs every variant once, in a fresh random
order, after one warm-up step each; the median over rounds is reported. Training time is one
optimizer step (forward, backward, AdamW step) on a random batch; inference time is one
no-grad forward in eval mode.
Memory: on CUDA, torch.cuda.max_memory_allocated over two training steps / two forwards. On
CPU, which has no allocator statistics, each variant runs in a fresh subprocess: the peak RSS is
reset (Linux /proc/self/clear_refs) right before two training steps / two forwards, and the
reported figure is the growth of the peak RSS over them plus the bytes of the model's parameters
and buffers, i.e. the model plus what one step adds (gradients, optimizer state, activations).
glibc is told to map every allocation over 64 KiB separately and return freed memory at once,
so RSS follows live tensors rather than the allocator's cache.
The whole-process RSS of this torch build is dominated by ~2.7 GB of libraries, which would
hide every difference between methods.
Ratios: training against full fine-tuning, inference against the plain backbone.
Precision: fp32, or bf16 (`--precision bf16`): every timed, memory-probed and profiled forward
(and the loss) runs under torch.autocast(device, bfloat16); backward and the optimizer step
follow autocast's usual rules (weights and their gradients stay fp32).
Modes (`--modes bf16,compiled,compiled_bf16`): full, bias and SSF training steps again under
bf16 autocast and/or torch.compile (default inductor backend), timed in the same interleaved
rounds as everything else, so each mode's ratios sit beside fp32 eager from the same run.
Merge memory: in a fresh process, the peak RSS growth of `scaleshift.merge` on the SSF model
(random non-identity vectors) against the model's own bytes.
Every run writes results.md: each ratio, the goals, the command, the machine and the versions.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .errors import ScaleshiftError
from .io import claim_folder, figure, save_png, write_json, write_text
from .merge import merge, perturb_trainable
from .methods import apply
from .models import create_model
from .profiles import check_takes_input, input_size_of
from .progress import progress
from .records import check_input_size, check_int
from .runs import machine_info


@dataclass(frozen=True)
class Variant:
    label: str
    method: str | None               # None: the plain backbone
    options: dict = field(default_factory=dict)
    merged: bool = False
    train: bool = True
    infer: bool = True


VARIANTS = [
    Variant("plain", None, train=False),
    Variant("full", "full", infer=False),
    Variant("linear", "linear", infer=False),
    Variant("bias", "bias", infer=False),
    Variant("adapter", "adapter"),
    Variant("vpt_shallow_50", "vpt_shallow", {"prompts": 50}),
    Variant("vpt_shallow_200", "vpt_shallow", {"prompts": 200}),
    Variant("vpt_deep_50", "vpt_deep", {"prompts": 50}),
    Variant("vpt_deep_200", "vpt_deep", {"prompts": 200}),
    Variant("lora", "lora"),
    Variant("lora_merged", "lora", merged=True, train=False),
    Variant("ssf", "ssf"),
    Variant("ssf_merged", "ssf", merged=True, train=False),
]


def build(model_name: str, model_kwargs: dict, variant: Variant, num_classes: int, device) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    if variant.method is not None:
        apply(model, variant.method, **variant.options)
        if variant.merged:
            model = merge(model)
    return model.to(device)


def applicable(model_name: str, model_kwargs: dict) -> list[Variant]:
    """The variants whose method applies to this backbone (VPT needs ViT or Swin)."""
    keep = []
    for variant in VARIANTS:
        if variant.method is None:
            keep.append(variant)
            continue
        with torch.device("meta"):
            model = create_model(model_name, num_classes=10, **model_kwargs)
        try:
            apply(model, variant.method, **variant.options)
            keep.append(variant)
        except ScaleshiftError:
            pass
    return keep


PRECISIONS = ("fp32", "bf16")
MAX_BATCH, MAX_ROUNDS = 65536, 1000


def autocast(device, precision: str):
    """The context every measured forward runs in: nothing for fp32, bf16 autocast otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def check_precision(precision: str, device) -> None:
    if precision not in PRECISIONS:
        raise ScaleshiftError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ScaleshiftError("--precision bf16: this CUDA device has no bfloat16 support")


# extra step-time modes: name -> (precision, compiled); each times the MODE_VARIANTS' steps
MODES = {"bf16": ("bf16", False), "compiled": ("fp32", True), "compiled_bf16": ("bf16", True)}
MODE_VARIANTS = ("full", "bias", "ssf")


def check_modes(modes: list[str]) -> None:
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ScaleshiftError(f"--modes: unknown {bad}; choose from {list(MODES)}")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, images, labels, device, precision: str = "fp32") -> float:
    _sync(device)
    start = time.perf_counter()
    with autocast(device, precision):
        loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    _sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def infer_step(model, images, device, precision: str = "fp32") -> float:
    _sync(device)
    start = time.perf_counter()
    with autocast(device, precision):
        model(images)
    _sync(device)
    return time.perf_counter() - start


def input_shape(model: nn.Module, batch: int, size: int | None) -> tuple:
    channels, height, width = input_size_of(model)
    return (batch, channels, size or height, size or width)


def checked_input_shape(model_name: str, model_kwargs: dict, batch: int, size: int | None) -> tuple:
    """The timed batch's shape, once a batch of one at that size has gone through the plain model:
    a --size the backbone cannot take (a ViT's input size is fixed when it is built) is a usage
    error, not a traceback from the middle of the timing loop."""
    model = build(model_name, model_kwargs, VARIANTS[0], 10, "cpu").eval()
    shape = input_shape(model, batch, size)
    if size is not None:
        check_takes_input(model, torch.zeros(1, *shape[1:]), f"--size {size}",
                          f"a ViT is built for one input size, so pass model_kwargs.img_size={size} "
                          f"as well, or leave --size out")
    return shape


def _optimizer(model: nn.Module):
    import timm.optim
    return timm.optim.create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05)


def _model_and_batch(model_name: str, model_kwargs: dict, variant: Variant, batch: int,
                     size: int | None, device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """One variant's model and a random batch of images and labels (10 classes)."""
    model = build(model_name, model_kwargs, variant, 10, device)
    images = torch.randn(input_shape(model, batch, size)).to(device)
    return model, images, torch.randint(0, 10, (batch,)).to(device)


def measure_times(model_name: str, model_kwargs: dict, batch: int, rounds: int, device,
                  size: int | None, variants: list[Variant], precision: str = "fp32",
                  modes: list[str] = ()) -> dict:
    """Median seconds per training step and per inference forward, variants interleaved:
    "label/kind" in `precision`, eager; "label/train@mode" for each extra mode."""
    models, optimizers, precisions = {}, {}, {}
    for v in variants:
        models[v.label] = build(model_name, model_kwargs, v, 10, device)
        if v.train:
            optimizers[v.label] = _optimizer(models[v.label])
        precisions[v.label] = precision
    for mode in modes:
        mode_precision, compiled = MODES[mode]
        for v in [v for v in variants if v.label in MODE_VARIANTS]:
            model = build(model_name, model_kwargs, v, 10, device)
            key = f"{v.label}@{mode}"
            optimizers[key] = _optimizer(model)
            models[key] = torch.compile(model) if compiled else model
            precisions[key] = mode_precision
    shape = input_shape(next(iter(models.values())), batch, size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(shape, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    jobs = [(v.label, "train") for v in variants if v.train] + \
           [(v.label, "infer") for v in variants if v.infer] + \
           [(key, "train") for key in models if "@" in key]
    times = {job: [] for job in jobs}
    first_steps = {}
    order = random.Random(0)
    for round_index in progress(range(rounds + 1), "timing rounds"):   # round 0 is the warm-up
        order.shuffle(jobs)
        for label, kind in jobs:
            model = models[label]
            if kind == "train":
                model.train()
                seconds = train_step(model, optimizers[label], images, labels, device, precisions[label])
            else:
                model.eval()
                seconds = infer_step(model, images, device, precisions[label])
            if round_index:
                times[(label, kind)].append(seconds)
            elif "@" in label:
                first_steps[label] = seconds   # with torch.compile: the compilation
    out = {f"first_step/{label}": seconds for label, seconds in first_steps.items()}
    for (label, kind), values in times.items():
        name, _, mode = label.partition("@")
        out[f"{name}/{kind}" + (f"@{mode}" if mode else "")] = statistics.median(values)
    return out


def memory_probe(model_name: str, model_kwargs: dict, label: str, kind: str, batch: int,
                 size: int | None, device_name: str, precision: str = "fp32") -> float:
    """Peak memory (MB) of two training steps or two forwards of one variant."""
    device = torch.device(device_name)
    variant = next(v for v in VARIANTS if v.label == label)
    model, images, labels = _model_and_batch(model_name, model_kwargs, variant, batch, size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        rss_before = reset_peak_rss()
    if kind == "train":
        optimizer = _optimizer(model)
        model.train()
        for _ in range(2):
            train_step(model, optimizer, images, labels, device, precision)
    else:
        model.eval()
        for _ in range(2):
            infer_step(model, images, device, precision)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return (proc_status_kb("VmHWM") - rss_before) / 1024 + model_bytes / 2**20


def merge_memory_probe(model_name: str, model_kwargs: dict) -> dict:
    """Peak RSS growth of scaleshift.merge on an SSF model, against the model's bytes (CPU)."""
    model = build(model_name, model_kwargs, Variant("ssf", "ssf"), 10, torch.device("cpu"))
    perturb_trainable(model)
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    rss_before = reset_peak_rss()
    merged = merge(model)
    growth = (proc_status_kb("VmHWM") - rss_before) * 1024
    merged_bytes = sum(t.numel() * t.element_size() for t in [*merged.parameters(), *merged.buffers()])
    return dict(model_mb=model_bytes / 2**20, merged_model_mb=merged_bytes / 2**20,
                peak_growth_mb=growth / 2**20, growth_ratio=growth / model_bytes)


def _fresh_process(function: str, args: list) -> object:
    """scaleshift.bench.<function>(*args) in a new Python process; its JSON result."""
    code = (f"import json, sys; from scaleshift.bench import {function}; "
            f"print(json.dumps({function}(*json.loads(sys.argv[1]))))")
    # glibc: serve every allocation over 64 KiB with mmap and give freed memory back at
    # once, so that RSS follows the live tensors instead of the allocator's cache
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()),
               MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                          text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{function}{tuple(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def proc_status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise ScaleshiftError(f"/proc/self/status has no {field_name}")


def reset_peak_rss() -> int:
    """Reset the peak RSS to the current RSS; return the current RSS in KiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        raise ScaleshiftError(f"CPU memory measurement needs Linux /proc/self/clear_refs ({exc}); "
                              f"use --no-memory") from None
    return proc_status_kb("VmRSS")


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
              "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution",
              "aten::convolution_backward", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def _trained_variant(label: str) -> Variant:
    variant = next((v for v in VARIANTS if v.label == label and v.train), None)
    if variant is None:
        raise ScaleshiftError(f"--profile: {label!r} is not a trained variant; one of "
                              f"{', '.join(v.label for v in VARIANTS if v.train)}")
    return variant


def profile_train_steps(model_name: str, model_kwargs: dict, batch: int, device, size: int | None,
                        labels: list[str], out: Path | None, precision: str = "fp32") -> dict:
    """torch.profiler over one training step per variant (after a warm-up step): self time in
    matmul/conv/attention kernels vs everything else, and the top ops (written to
    profile_<label>.txt under `out`)."""
    from torch.profiler import ProfilerActivity, profile
    summary = {}
    for label in progress(labels, "profiling"):
        variant = _trained_variant(label)
        model, images, labels_t = _model_and_batch(model_name, model_kwargs, variant, batch, size, device)
        optimizer = _optimizer(model.train())
        train_step(model, optimizer, images, labels_t, device, precision)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            train_step(model, optimizer, images, labels_t, device, precision)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        heavy = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS
                    or e.key.startswith("aten::_scaled_dot_product"))
        summary[label] = dict(self_ms=total / 1e3, matmul_conv_attention_ms=heavy / 1e3,
                              other_ms=(total - heavy) / 1e3)
        if out is not None:
            write_text(out / f"profile_{label}.txt", events.table(sort_by="self_cpu_time_total", row_limit=25))
    return summary


def measure_memory(model_name: str, model_kwargs: dict, batch: int, device, size: int | None,
                   variants: list[Variant], precision: str = "fp32") -> dict:
    results = {}
    for v in progress(variants, "memory probes"):
        for kind in [k for k, on in (("train", v.train), ("infer", v.infer)) if on]:
            if device.type == "cuda":
                results[f"{v.label}/{kind}"] = memory_probe(model_name, model_kwargs, v.label, kind,
                                                            batch, size, "cuda", precision)
                continue
            results[f"{v.label}/{kind}"] = _fresh_process("memory_probe", [
                model_name, model_kwargs, v.label, kind, batch, size, "cpu", precision])
    return results


def run_bench(model_name: str, batch: int, device_name: str = "cpu", rounds: int = 3,
              model_kwargs: dict | None = None, size: int | None = None, out: str | None = None,
              with_memory: bool = True, profile: list[str] | None = None,
              precision: str = "fp32", modes: list[str] = (), with_time: bool = True,
              with_merge: bool | None = None, command: str | None = None) -> dict:
    """Time, memory, merge memory (default: with the memory probes, on CPU) and profiles of
    every applicable method on one backbone; writes bench.json/csv/png and results.md to `out`."""
    model_kwargs = model_kwargs or {}
    check_input_size(size, "--size")
    check_int(batch, "--batch-size", "bench", 1, MAX_BATCH)
    check_int(rounds, "--rounds", "bench", 1, MAX_ROUNDS)
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScaleshiftError("--device cuda but no CUDA device is available")
    check_precision(precision, device)
    check_modes(list(modes))
    for label in profile or []:
        _trained_variant(label)
    if with_merge is None:
        with_merge = with_memory and device.type == "cpu"
    if with_merge and device.type != "cpu":
        raise ScaleshiftError("the merge memory probe reads the process's RSS: CPU only")
    variants = applicable(model_name, model_kwargs)
    shape = checked_input_shape(model_name, model_kwargs, batch, size)
    if out:   # claimed before the minutes of measuring, refused before any write
        claim_folder(Path(out), MARKER, "bench results", written_before=_bench_folder)
    started, load_before = time.time(), os.getloadavg()
    times = measure_times(model_name, model_kwargs, batch, rounds, device, size, variants,
                          precision, list(modes)) if with_time else {}
    memory = measure_memory(model_name, model_kwargs, batch, device, size, variants,
                            precision) if with_memory else {}
    merge_memory = _fresh_process("merge_memory_probe", [model_name, model_kwargs]) if with_merge else None
    profiled = profile_train_steps(model_name, model_kwargs, batch, device, size, profile,
                                   Path(out) if out else None, precision) if profile else {}
    rows = []
    for v in variants:
        for kind in [k for k, on in (("train", v.train), ("infer", v.infer)) if on]:
            key = f"{v.label}/{kind}"
            ref = "full/train" if kind == "train" else "plain/infer"
            if key not in times and key not in memory:
                continue
            rows.append(dict(variant=v.label, kind=kind, seconds=times.get(key),
                             time_ratio=times[key] / times[ref] if key in times else None,
                             memory_mb=memory.get(key),
                             memory_ratio=memory[key] / memory[ref] if key in memory else None))
    mode_rows = [dict(mode=mode, variant=label, seconds=times[f"{label}/train@{mode}"],
                      time_ratio=times[f"{label}/train@{mode}"] / times[f"full/train@{mode}"],
                      vs_eager=times[f"{label}/train@{mode}"] / times[f"{label}/train"],
                      first_step_seconds=times[f"first_step/{label}@{mode}"])
                 for mode in modes for label in MODE_VARIANTS if f"{label}/train@{mode}" in times]
    result = dict(model=model_name, model_kwargs=model_kwargs, batch=batch, device=device_name,
                  precision=precision, rounds=rounds, input=list(shape),
                  memory_measure="cuda max_memory_allocated" if device.type == "cuda"
                  else "model bytes + peak RSS growth over two steps (fresh process per variant)",
                  rows=rows, modes=mode_rows, merge_memory=merge_memory, profile=profiled,
                  seconds_total=round(time.time() - started, 1), command=command,
                  load_average=dict(start=[round(x, 2) for x in load_before],
                                    end=[round(x, 2) for x in os.getloadavg()]),
                  machine=machine_info())
    if out:
        write_bench(result, Path(out))
    return result


MARKER = ".scaleshift-bench"


def _bench_folder(out: Path) -> bool:
    """A bench folder written before the marker: its bench.json is a bench result."""
    try:
        return {"model", "rows", "machine"} <= set(json.loads((out / "bench.json").read_text()))
    except (OSError, ValueError, TypeError):
        return False


def goals(result: dict) -> list[dict]:
    """The cost goals as measured ratios: the SSF paper's claims (Figure 3), tightened to SSF at
    BitFit's step cost, <= 0.72x full fine-tuning's, and a merge within one model's memory."""
    by = {(r["variant"], r["kind"]): r for r in result["rows"]}

    def get(variant, kind, key):
        row = by.get((variant, kind))
        return None if row is None else row[key]
    merge_memory = result.get("merge_memory") or {}
    checks = [
        ("merged SSF inference time / plain", get("ssf_merged", "infer", "time_ratio"), 0.97, 1.03),
        ("unmerged SSF inference time / plain", get("ssf", "infer", "time_ratio"), None, 1.03),
        ("SSF training step time / full", get("ssf", "train", "time_ratio"), None, 0.72),
        ("SSF training peak memory / full", get("ssf", "train", "memory_ratio"), None, 0.70),
    ]
    ssf, bias = get("ssf", "train", "seconds"), get("bias", "train", "seconds")
    checks.append(("SSF training step time / bias", ssf / bias if ssf and bias else None, None, 1.00))
    checks.append(("merge peak memory growth / model bytes", merge_memory.get("growth_ratio"), None, 1.10))
    return [dict(goal=name, value=value, limit=f"<= {high:.2f}" if low is None else f"{low:.2f}..{high:.2f}",
                 met=None if value is None else ((low is None or value >= low) and value <= high))
            for name, value, low, high in checks]


def write_bench(result: dict, out: Path) -> None:
    import csv
    import io

    result = dict(result, goals=goals(result))
    write_json(out / "bench.json", result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["variant", "kind", "seconds", "time_ratio",
                                                "memory_mb", "memory_ratio"])
    writer.writeheader()
    writer.writerows(result["rows"])
    write_text(out / "bench.csv", buffer.getvalue())
    write_text(out / "results.md", results_markdown(result))
    if any(r["seconds"] is not None for r in result["rows"]):
        plot_bench(result, out / "bench.png")


def plot_bench(result: dict, path: Path) -> None:
    """Four panels as in paper Figure 3: training time, training memory, inference time,
    inference memory."""
    fig, axes = figure(2, 2, figsize=(12, 8))
    panels = [("train", "seconds", "training time per step (s)"),
              ("train", "memory_mb", "training peak memory (MB)"),
              ("infer", "seconds", "inference time per batch (s)"),
              ("infer", "memory_mb", "inference peak memory (MB)")]
    for ax, (kind, key, title) in zip(axes.flat, panels):
        rows = [r for r in result["rows"] if r["kind"] == kind and r[key] is not None]
        ax.bar([r["variant"] for r in rows], [r[key] for r in rows],
               color=["tab:red" if r["variant"].startswith("ssf") else "tab:gray" for r in rows])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=60)
    fig.suptitle(f"{result['model']} batch {result['batch']} {result.get('precision', 'fp32')} "
                 f"on {result['device']} "
                 f"({result['machine']['cpus']} CPUs, torch {result['machine']['torch']})")
    fig.tight_layout()
    save_png(fig, path)


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(result: dict) -> str:
    lines = [f"{'variant':18} {'kind':6} {'seconds':>9} {'x ref':>7} {'memory MB':>10} {'x ref':>7}"]
    for r in result["rows"]:
        mem = f"{r['memory_mb']:10.0f} {r['memory_ratio']:7.2f}" if r["memory_mb"] else f"{'':10} {'':7}"
        lines.append(f"{r['variant']:18} {r['kind']:6} {_number(r['seconds'], 4):>9} "
                     f"{_number(r['time_ratio'], 2):>7} {mem}")
    lines.append(f"precision: {result.get('precision', 'fp32')}; reference: training vs full, inference vs "
                 f"plain; memory: " + result["memory_measure"])
    for r in result.get("modes", []):
        lines.append(f"mode {r['mode']:14} {r['variant']:5} train {r['seconds']:9.4f} s: x full "
                     f"{r['time_ratio']:.3f}, x its fp32 eager step {r['vs_eager']:.3f} "
                     f"(first step {r['first_step_seconds']:.1f} s)")
    if result.get("merge_memory"):
        m = result["merge_memory"]
        lines.append(f"merge: peak RSS growth {m['peak_growth_mb']:.0f} MB for a {m['model_mb']:.0f} MB "
                     f"model ({m['growth_ratio']:.3f}x its bytes)")
    for g in goals(result):
        lines.append(f"goal: {g['goal']:40} {_number(g['value']):>7}  "
                     f"{'met' if g['met'] else 'MISSED' if g['met'] is False else ''}")
    floor = bitfit_floor(result)
    if floor is not None:
        lines.append(f"floor: bias (BitFit) training step time / full {floor:.3f}")
    for label, p in result.get("profile", {}).items():
        lines.append(f"profile {label:16} self {p['self_ms']:9.1f} ms: matmul/conv/attention "
                     f"{p['matmul_conv_attention_ms']:9.1f} ms, other {p['other_ms']:9.1f} ms")
    return "\n".join(lines)


def bitfit_floor(result: dict) -> float | None:
    """BitFit's step / full's: BitFit trains no weight matrix either, so its step is the floor
    for any method that needs gradients through every block."""
    row = next((r for r in result["rows"] if (r["variant"], r["kind"]) == ("bias", "train")), None)
    return None if row is None else row["time_ratio"]


def results_markdown(result: dict) -> str:
    """results.md: every number of the run with the command, the machine and the versions."""
    m = result["machine"]
    kwargs = f" {json.dumps(result['model_kwargs'])}" if result["model_kwargs"] else ""
    out = [f"# scaleshift bench: {result['model']}{kwargs}, batch {result['batch']}, input "
           f"{'x'.join(map(str, result['input'][1:]))}, {result.get('precision', 'fp32')}, {result['device']}",
           "",
           f"Command: `{result.get('command') or 'scaleshift.bench.run_bench (Python API)'}`",
           "",
           f"Machine: {m['cpus']} CPUs ({m.get('cpu_capability', '?')}, "
           f"{', '.join(m.get('cpu_extensions') or []) or 'no listed extensions'}), {m['threads']} "
           f"torch threads, {m['platform']}; Python {m['python']}, torch {m['torch']}, timm {m['timm']}, "
           f"scaleshift {m['scaleshift']}. Load average (1, 5, 15 min) at start "
           f"{result['load_average']['start']}, at end {result['load_average']['end']}: the cores "
           f"are shared, so only ratios measured in the same interleaved rounds are compared. "
           f"{result['rounds']} timed rounds after one warm-up round, every step of every variant "
           f"once per round in a fresh random order; medians. {result['seconds_total']:.0f} s in all.",
           "", "## Goals", "", "| goal | measured | goal | met |", "|---|---:|---:|---|"]
    for g in goals(result):
        out.append(f"| {g['goal']} | {_number(g['value'])} | {g['limit']} | "
                   f"{'yes' if g['met'] else 'no' if g['met'] is False else 'not measured'} |")
    floor = bitfit_floor(result)
    if floor is not None:
        out.append(f"| *bias (BitFit) training step time / full: the floor* | {floor:.3f} | | |")
    if result["rows"]:
        out += ["", "## Every method", "",
                "Training against full fine-tuning, inference against the plain backbone; memory: "
                f"{result['memory_measure']}.", "",
                "| variant | kind | seconds | x ref | peak memory MB | x ref |", "|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        out.append(f"| {r['variant']} | {r['kind']} | {_number(r['seconds'], 4)} | {_number(r['time_ratio'])} "
                   f"| {_number(r['memory_mb'], 0)} | {_number(r['memory_ratio'])} |")
    if result.get("modes"):
        out += ["", "## Training step by precision and compilation", "",
                "bf16: the forward and the loss under torch.autocast(bfloat16); compiled: "
                "torch.compile(model), default (inductor) backend. Medians exclude the first "
                "step, which for a compiled model includes the compilation (its own column; "
                "inductor's on-disk cache may shorten it).", "",
                "| mode | method | seconds | x full (same mode) | x fp32 eager (same method) | first step s |",
                "|---|---|---:|---:|---:|---:|"]
        eager = {r["variant"]: r for r in result["rows"] if r["kind"] == "train"}
        for label in MODE_VARIANTS:
            if label in eager:
                out.append(f"| fp32 eager | {label} | {eager[label]['seconds']:.4f} | "
                           f"{eager[label]['time_ratio']:.3f} | 1.000 | |")
        for r in result["modes"]:
            out.append(f"| {r['mode']} | {r['variant']} | {r['seconds']:.4f} | {r['time_ratio']:.3f} "
                       f"| {r['vs_eager']:.3f} | {r['first_step_seconds']:.1f} |")
    if result.get("merge_memory"):
        mm = result["merge_memory"]
        out += ["", "## Merge memory", "",
                "`scaleshift.merge` on the SSF model in a fresh process: growth of the peak RSS "
                "during the call (glibc returns freed memory at once).", "",
                "| model MB | merged model MB | peak growth MB | growth / model bytes |",
                "|---:|---:|---:|---:|",
                f"| {mm['model_mb']:.1f} | {mm['merged_model_mb']:.1f} | {mm['peak_growth_mb']:.1f} "
                f"| {mm['growth_ratio']:.3f} |"]
    if result.get("profile"):
        out += ["", "## Profiles (torch.profiler, one training step)", "",
                "| variant | self ms | matmul/conv/attention ms | other ms |", "|---|---:|---:|---:|"]
        for label, p in result["profile"].items():
            out.append(f"| {label} | {p['self_ms']:.1f} | {p['matmul_conv_attention_ms']:.1f} | "
                       f"{p['other_ms']:.1f} |")
    return "\n".join(out) + "\n"

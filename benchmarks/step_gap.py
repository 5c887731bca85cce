"""What SSF's step costs over BitFit's, with the allocator's noise taken out. ViT-S/16, 224 px,
batch 16, fp32, each mode in fresh processes.

    python benchmarks/step_gap.py                  # 2 allocator modes x 2 processes x 9 rounds, about 12 min
    python benchmarks/step_gap.py --tables-only    # the table again from the committed records

Separate processes disagree on SSF / BitFit by a few percent (benchmarks/fresh_runs.py). One
cause is glibc's allocator: between steps it returns freed heap to the system, and whichever
variant then re-grows the heap pays page faults for it, a different one in each process. Here
every step's page faults are counted, and each process runs in one of two modes:

- default: glibc as it comes;
- kept: `mallopt(M_TRIM_THRESHOLD, 1 GiB)` and `mallopt(M_MMAP_MAX, 0)`, so freed memory stays in
  the process and no step faults after the warm-up.

Four variants are interleaved in a random order every round:

- bias: BitFit, the floor SSF is measured against;
- ssf: scaleshift's SSF;
- ssf_kept_fold: SSF keeping each folded weight (scale * W) from the forward pass for the
  backward instead of folding it again: one more copy of the Linear weights held during the
  step (the bytes are in the table);
- no_fold_probe: the same step with the scale left out of every Linear (wrong outputs, not
  SSF): how much time the folds themselves cost.

Each process's record goes to --out/runs/MODE_N.json as it finishes, so an interrupted run
resumes where it stopped.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import resource
import statistics
import sys
from pathlib import Path

VARIANTS = ("bias", "ssf", "ssf_kept_fold", "no_fold_probe")
MODES = ("default", "kept")
MODEL, BATCH = "vit_small_patch16_224", 16
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    libc = ctypes.CDLL("libc.so.6")
    if not (libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) and libc.mallopt(M_MMAP_MAX, 0)):
        raise SystemExit("mallopt refused the settings (not glibc?)")


def step_functions():
    """(kept_fold, no_fold) autograd Functions with FrozenLayerScaleShiftFn's signature."""
    import torch
    import torch.nn.functional as F

    from scaleshift.methods import ssf

    def run(layer, x, weight, bias):
        return F.linear(x, weight, bias) if isinstance(layer, torch.nn.Linear) else \
            layer._conv_forward(x, weight, bias)

    def sums(ctx, grad, z, scale, shift):
        linear = isinstance(ctx.layer, torch.nn.Linear)
        per_channel, sum_grad = ssf._channel_sums(grad, z, grad.ndim - 1 if linear else 1, shift,
                                                  1 / scale, True, True)
        return ssf._scale_grad(per_channel, scale), sum_grad.to(shift.dtype)

    class KeptFold(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, scale, shift, layer):
            weight, bias = ssf._scaled_weight_and_bias(layer, scale, shift)
            z = run(layer, x, weight, bias)
            ctx.save_for_backward(z, scale, shift, weight)
            ctx.layer, ctx.x_shape = layer, x.shape
            return z

        @staticmethod
        def backward(ctx, grad):
            z, scale, shift, weight = ctx.saved_tensors
            grad_x = ssf._input_grad(grad, weight, ctx.layer, ctx.x_shape)
            return (grad_x, *sums(ctx, grad, z, scale, shift), None)

    class NoFold(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, scale, shift, layer):
            z = run(layer, x, layer.weight, layer.bias + shift)
            ctx.save_for_backward(z, scale, shift)
            ctx.layer, ctx.x_shape = layer, x.shape
            return z

        @staticmethod
        def backward(ctx, grad):
            z, scale, shift = ctx.saved_tensors
            grad_x = ssf._input_grad(grad, ctx.layer.weight, ctx.layer, ctx.x_shape)
            return (grad_x, *sums(ctx, grad, z, scale, shift), None)

    return KeptFold, NoFold


def one_run(mode: str, rounds: int, seed: int) -> dict:
    """Medians and page faults of `rounds` interleaved steps of each variant, in this process."""
    if mode == "kept":
        keep_freed_memory()
    import torch

    from scaleshift.bench import Variant, _optimizer, build, train_step
    from scaleshift.methods import ssf
    load_before = os.getloadavg()
    random.seed(seed)
    torch.manual_seed(0)
    device = torch.device("cpu")
    images, labels = torch.randn(BATCH, 3, 224, 224), torch.randint(0, 10, (BATCH,))
    functions = dict(zip(("ssf_kept_fold", "no_fold_probe"), step_functions()))
    functions["ssf"] = ssf.FrozenLayerScaleShiftFn
    steps = {}
    for name in VARIANTS:
        model = build(MODEL, {}, Variant(name, "bias" if name == "bias" else "ssf"), 10, device).train()
        steps[name] = (model, _optimizer(model))
    kept_bytes = sum(m.base_layer.weight.numel() * 4 for m in steps["ssf"][0].modules()
                     if isinstance(m, ssf.ScaleShift) and m.mode == "output")

    def step(name):
        ssf.FrozenLayerScaleShiftFn = functions.get(name, functions["ssf"])
        try:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            seconds = train_step(*steps[name], images, labels, device)
            return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        finally:
            ssf.FrozenLayerScaleShiftFn = functions["ssf"]

    for name in VARIANTS:
        step(name)                              # warm-up
    times = {name: [] for name in VARIANTS}
    faults = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name in random.sample(VARIANTS, len(VARIANTS)):
            seconds, count = step(name)
            times[name].append(seconds)
            faults[name].append(count)
    median = {name: statistics.median(t) for name, t in times.items()}
    return dict(mode=mode, seed=seed, rounds=rounds, seconds=times, page_faults=faults, median_s=median,
                over_bias={name: median[name] / median["bias"] for name in VARIANTS},
                kept_fold_bytes=kept_bytes,
                load_average=dict(start=[round(x, 2) for x in load_before],
                                  end=[round(x, 2) for x in os.getloadavg()]))


def table(records: list[dict], command: str, machine: dict) -> str:
    lines = [f"# SSF's step over BitFit's, allocator noise taken out: {MODEL}, batch {BATCH}, "
             f"224 px, fp32, cpu", "", f"Command: `{command}`", "",
             f"Machine: {machine['cpus']} CPUs ({', '.join(machine['cpu_extensions'])}), "
             f"{machine['threads']} torch threads; Python {machine['python']}, torch {machine['torch']}, "
             f"timm {machine['timm']}, scaleshift {machine['scaleshift']}.", "",
             "Each row is one fresh process; every variant's step timed once per round in a random "
             "order after a warm-up step; medians, and the median page faults per step. Mode "
             "`kept`: glibc keeps freed memory (no heap trimming, no mmap). `no_fold_probe` is not "
             "SSF (the scale is left out of each Linear): it shows what the weight folds cost.", "",
             "| mode | process | load (1 min) start, end | BitFit s | SSF / BitFit | kept fold / BitFit "
             "| no-fold probe / BitFit | page faults per step: BitFit, SSF, kept fold |",
             "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in records:
        ratio, faults = r["over_bias"], {k: int(statistics.median(v)) for k, v in r["page_faults"].items()}
        lines.append(f"| {r['mode']} | {r['seed']} | {r['load_average']['start'][0]}, "
                     f"{r['load_average']['end'][0]} | {r['median_s']['bias']:.3f} | {ratio['ssf']:.3f} | "
                     f"{ratio['ssf_kept_fold']:.3f} | {ratio['no_fold_probe']:.3f} | "
                     f"{faults['bias']:,}, {faults['ssf']:,}, {faults['ssf_kept_fold']:,} |")
    for mode in MODES:
        rows = [r for r in records if r["mode"] == mode]
        if rows:
            lines.append(f"| {mode}: median | | | | " + " | ".join(
                f"{statistics.median(r['over_bias'][k] for r in rows):.3f}"
                for k in ("ssf", "ssf_kept_fold", "no_fold_probe")) + " | |")
    kept_mb = records[0]["kept_fold_bytes"] / 2**20 if records else 0
    lines += ["", f"Keeping the folds holds {kept_mb:.0f} MB more during each step (every folded "
              f"Linear and Conv weight of the model, fp32)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="per allocator mode")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", default="results/bench/vit_small_patch16_224_b16_step_gap")
    parser.add_argument("--tables-only", action="store_true")
    parser.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)   # a child: MODE SEED
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_run(args.one[0], args.rounds, int(args.one[1]))))
        return 0
    from child_runs import run_children
    out = Path(args.out)
    command = f"python benchmarks/step_gap.py --processes {args.processes} --rounds {args.rounds}"
    jobs = [(f"{mode}_{i}", ["--one", mode, str(i), "--rounds", str(args.rounds)])
            for i in range(1, args.processes + 1)
            for mode in MODES]   # the modes alternate, so a change in the machine's load hits both
    print(run_children(__file__, out, jobs, command, args.tables_only, table, model=MODEL, batch=BATCH))
    return 0


if __name__ == "__main__":
    sys.exit(main())

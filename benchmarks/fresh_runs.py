"""How far apart are separate runs of the same step-time ratio? SSF, BitFit and full fine-tuning on
ViT-S/16, 224 px, batch 16, fp32, each run in a fresh process.

    python benchmarks/fresh_runs.py                  # 4 processes x 7 interleaved rounds, about 8 min
    python benchmarks/fresh_runs.py --tables-only    # the table again from the committed records

`scaleshift bench` times every variant interleaved in one process and reports medians. On this
shared 2-core machine one such run moves by a few percent from the next (allocator state, what else
runs), which is as large as SSF's whole gap to BitFit. Here the three training steps are timed the
way `bench` times them (the same model builder, optimizer and step), in several fresh processes:
each process gives its own medians and ratios, and the table shows the spread between processes.
Each process's record is written to --out/runs/run_N.json as it finishes, so an interrupted check
resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path

VARIANTS = ("bias", "ssf", "full")
MODEL, BATCH = "vit_small_patch16_224", 16


def one_run(rounds: int, seed: int) -> dict:
    """Medians of `rounds` interleaved training steps of each variant, in this process."""
    import torch

    from scaleshift.bench import Variant, _optimizer, build, train_step
    load_before = os.getloadavg()
    random.seed(seed)
    torch.manual_seed(0)
    device = torch.device("cpu")
    images, labels = torch.randn(BATCH, 3, 224, 224), torch.randint(0, 10, (BATCH,))
    steps = {}
    for name in VARIANTS:
        model = build(MODEL, {}, Variant(name, name), 10, device).train()
        optimizer = _optimizer(model)
        train_step(model, optimizer, images, labels, device)   # warm-up
        steps[name] = (model, optimizer)
    times = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name in random.sample(VARIANTS, len(VARIANTS)):
            times[name].append(train_step(*steps[name], images, labels, device))
    median = {name: statistics.median(t) for name, t in times.items()}
    return dict(seed=seed, rounds=rounds, seconds=times, median_s=median,
                load_average=dict(start=[round(x, 2) for x in load_before],
                                  end=[round(x, 2) for x in os.getloadavg()]),
                ssf_over_bias=median["ssf"] / median["bias"], ssf_over_full=median["ssf"] / median["full"],
                bias_over_full=median["bias"] / median["full"])


def table(records: list[dict], command: str, machine: dict) -> str:
    lines = [f"# Step-time ratios in separate processes: {MODEL}, batch {BATCH}, 224 px, fp32, cpu", "",
             f"Command: `{command}`", "",
             f"Machine: {machine['cpus']} CPUs ({', '.join(machine['cpu_extensions'])}), "
             f"{machine['threads']} torch threads; Python {machine['python']}, torch {machine['torch']}, "
             f"timm {machine['timm']}, scaleshift {machine['scaleshift']}.", "",
             "Each row is one fresh process: every variant's step timed once per round in a random "
             "order, after one warm-up step; medians. Goals: SSF / BitFit <= 1.00, SSF / full <= 0.72.", "",
             "| process | rounds | load (1 min) at start, end | BitFit s | SSF s | full s | SSF / BitFit "
             "| SSF / full | BitFit / full |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(records, 1):
        m = r["median_s"]
        load = r["load_average"]
        lines.append(f"| {i} | {r['rounds']} | {load['start'][0]}, {load['end'][0]} | {m['bias']:.3f} | {m['ssf']:.3f} | {m['full']:.3f} | "
                     f"{r['ssf_over_bias']:.3f} | {r['ssf_over_full']:.3f} | {r['bias_over_full']:.3f} |")
    for label, pick in (("median", statistics.median), ("min", min), ("max", max)):
        lines.append(f"| {label} | | | | | | " + " | ".join(
            f"{pick(r[k] for r in records):.3f}" for k in ("ssf_over_bias", "ssf_over_full", "bias_over_full"))
            + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="results/bench/vit_small_patch16_224_b16_fresh_runs")
    parser.add_argument("--tables-only", action="store_true")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)   # a child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_run(args.rounds, args.one)))
        return 0
    from child_runs import run_children
    out = Path(args.out)
    command = f"python benchmarks/fresh_runs.py --processes {args.processes} --rounds {args.rounds}"
    jobs = [(f"run_{i}", ["--one", str(i), "--rounds", str(args.rounds)])
            for i in range(1, args.processes + 1)]
    print(run_children(__file__, out, jobs, command, args.tables_only, table, model=MODEL, batch=BATCH))
    return 0


if __name__ == "__main__":
    sys.exit(main())

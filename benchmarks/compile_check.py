"""Does `compile=inductor` keep a recipe's accuracy, and what does it save? Eager and compiled
runs of one recipe, seed by seed (interleaved, each in a fresh process), under the clean protocol.

    python benchmarks/compile_check.py                       # embedded ViT, SSF, patch_textures, 3 seeds
    python benchmarks/compile_check.py --seeds 0 --epochs 2  # a quick look

Run folders go under --runs (a finished run is reused, so a stopped check resumes). results.json
and results.md under --out, with each run's own results.json under runs/, hold every run's top-1,
its median training seconds per epoch (the epoch that compiles is left out by the median) and its
wall time, with the command, machine and versions.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from scaleshift.io import write_json, write_text
from scaleshift.runs import machine_info

# the demo's embedded-ViT SSF run (scaleshift demo --backbone scaleshift_vit32)
RECIPE = ["model=scaleshift_vit32", "pretrained=true", "dataset=patch_textures", "input_size=32",
          "train_split=train800", "val_split=val200", "test_split=test", "augment=vtab", "method=ssf",
          "batch_size=64", "lr=1e-2", "warmup_epochs=1", "weight_decay=0.05", "protocol=clean",
          "test_every_epoch=false", "log_every=1000"]


def run(runs: Path, seed: int, backend: str, epochs: int) -> dict:
    out = runs / f"{backend}_seed{seed}"
    if not (out / "results.json").is_file():
        subprocess.run([sys.executable, "-m", "scaleshift.cli", "train", *RECIPE, f"epochs={epochs}",
                        f"seed={seed}", "dataset_options.seed=0", f"compile={backend}",
                        f"out_dir={out}"], check=True)
    result = json.loads((out / "results.json").read_text())
    return dict(seed=seed, compile=backend, top1=result["reported"]["top1"],
                train_seconds_per_epoch=result["train_seconds_per_epoch"],
                wall_time_s=result["wall_time_s"], run=str(out))


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 \
        else f"{values[0]:.2f}"


def report(rows: list[dict], backend: str, command: str, machine: dict) -> str:
    by = {mode: [r for r in rows if r["compile"] == mode] for mode in ("none", backend)}
    lines = [f"# compile={backend} against eager: the embedded ViT, SSF, patch_textures, 32 px", "",
             f"Command: `{command}`", "",
             f"Machine: {machine['cpus']} CPUs ({machine.get('cpu_capability')}), {machine['threads']} torch "
             f"threads; Python {machine['python']}, torch {machine['torch']}, timm {machine['timm']}. "
             f"Load average (1, 5, 15 min) at the start {machine['load_average']['start']}, at the end "
             f"{machine['load_average']['end']}: a run reused from an earlier invocation kept its own.", "",
             "| seed | compile | test top-1 | train s / epoch (median) | wall time s |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['seed']} | {r['compile']} | {r['top1']:.2f} | {r['train_seconds_per_epoch']:.2f} | "
              f"{r['wall_time_s']:.0f} |" for r in rows]
    eager, compiled = by["none"], by[backend]
    step_ratio = statistics.median(c["train_seconds_per_epoch"] / e["train_seconds_per_epoch"]
                                   for e, c in zip(eager, compiled))
    wall_ratio = statistics.median(c["wall_time_s"] / e["wall_time_s"] for e, c in zip(eager, compiled))
    lines += ["", f"Test top-1, mean ± std over seeds: eager {mean_std([r['top1'] for r in eager])}, "
              f"compiled {mean_std([r['top1'] for r in compiled])}.",
              f"Compiled / eager, median over seeds: training seconds per epoch {step_ratio:.3f}, "
              f"wall time of the run {wall_ratio:.3f} (it includes the compilation)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--backend", default="inductor", choices=("inductor", "aot_eager"))
    parser.add_argument("--runs", default="runs/compile_check")
    parser.add_argument("--out", default="results/compile/vit32_patch_textures")
    args = parser.parse_args()
    command = "python benchmarks/compile_check.py " + " ".join(sys.argv[1:])
    rows, load_before = [], os.getloadavg()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for backend in ("none", args.backend):
            rows.append(run(Path(args.runs), seed, backend, args.epochs))
    machine = dict(machine_info(), load_average=dict(start=[round(x, 2) for x in load_before],
                                                     end=[round(x, 2) for x in os.getloadavg()]))
    out = Path(args.out)
    for row in rows:   # each run's own record, beside the table made from it
        write_json(out / "runs" / f"{Path(row['run']).name}.json", json.loads((Path(row["run"]) / "results.json").read_text()))
    write_json(out / "results.json", dict(command=command.strip(), recipe=RECIPE, epochs=args.epochs,
                                          rows=rows, machine=machine))
    write_text(out / "results.md", report(rows, args.backend, command.strip(), machine))
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

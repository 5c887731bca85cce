"""The paper's experiments in miniature, on scaleshift's own pretrained backbones, offline.

    python benchmarks/mini_repro.py --preset quick      # about 15 minutes on 2 CPU cores
    python benchmarks/mini_repro.py --preset full       # about 75 minutes; resumable
    python benchmarks/mini_repro.py --preset full --seeds 0,1,2   # mean +- std, about 3.5 hours
    python benchmarks/mini_repro.py --preset full --only a,d

(a) 1k-sample suite in the VTAB-1k protocol (train800 / val200 / test), grouped like VTAB,
    every method on the ViT, SSF and every method that applies on the ConvNeXt;
(b) the large-data regime (fashion-mnist, 10,000 training images: the budget of this machine);
(c) robustness: the models of (b) on fashion-mnist-C, per-corruption error and mCE relative to
    full fine-tuning (mCE of full fine-tuning = 100);
(d) the SSF ablations of paper Table 6 on one task.
Protocol "clean" everywhere: each run selects its epoch on val200 and reports that epoch's test
accuracy. Hyper-parameters are fixed per method in advance (no tuning, and never on test data).
Every finished run keeps its directory (results.json, adapter) under --runs, so an interrupted
suite resumes where it stopped (an unfinished run continues from its last epoch checkpoint).
Runs go `--jobs` at a time (default 2 processes of cpus/2 threads each). Tables go to --out as
Markdown and JSON, with Figure 4 (weights) and Figure 5 (CKA) PNGs from the ViT runs of (a).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import torch

from scaleshift.config import make_config
from scaleshift.engine import train
from scaleshift.runs import machine_info
from scaleshift.io import write_json, write_text
from scaleshift.progress import progress, say

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {
    "natural": ["digits", "fashion_mnist", "patch_textures", "patch_photos", "faces"],
    "specialized": ["patch_medical"],
    "structured": ["struct_location", "struct_orientation", "struct_count", "struct_distance"],
}
TASKS = [t for tasks in GROUPS.values() for t in tasks]
# Fixed per method before any run (the lr scale each method family is usually run at).
LR = {"full": 5e-4, "linear": 1e-2, "bias": 1e-2, "adapter": 5e-3, "vpt_shallow": 1e-2,
      "vpt_deep": 1e-2, "lora": 5e-3, "ssf": 1e-2}
# Options scaled to the small backbones (a 128-d ViT with 64 tokens): reduction 64 would leave
# an adapter bottleneck of 2, and 50 prompts would almost double the sequence.
OPTIONS = {"adapter": {"reduction": 8}, "vpt_shallow": {"prompts": 10}, "vpt_deep": {"prompts": 10},
           "linear": {"whole_head": False}}   # features are cached: the classifier alone trains
VIT_METHODS = ["full", "linear", "bias", "adapter", "vpt_shallow", "vpt_deep", "lora", "ssf"]
CONVNEXT_METHODS = ["full", "linear", "bias", "adapter", "lora", "ssf"]
ABLATIONS = [  # paper Table 6 rows: (table, label, SSF options)
    # the embedded ViT has 4 blocks: 0/1/2/3/all of 4 stand for the paper's 0/2/4/8/12 of 12
    ("6a", "layers=0", {"layers": 0}), ("6a", "layers=1", {"layers": 1}),
    ("6a", "layers=2", {"layers": 2}), ("6a", "layers=3", {"layers": 3}), ("6a", "all layers", {}),
    ("6b", "w/o mlp", {"exclude": "mlp"}), ("6b", "w/o attn", {"exclude": "attn"}),
    ("6b", "w/o embed", {"exclude": "embed"}), ("6b", "w/o norm", {"exclude": "norm"}),
    ("6c", "init random", {"init": "random"}), ("6c", "init constant", {"init": "constant"}),
    ("6c", "init uniform", {"init": "uniform"}), ("6c", "init trunc_normal", {"init": "trunc_normal"}),
    ("6c", "init normal", {}),
    ("6d", "w/o scale", {"scale": False}), ("6d", "w/o shift", {"shift": False}),
    ("6d", "only norm", {"only_norm": True}), ("6d", "scalar scale", {"scalar_scale": True}),
]
PRESETS = {
    "quick": dict(seeds=[0], epochs=8, tasks=["digits", "patch_textures", "struct_count"],
                  vit_methods=["linear", "bias", "ssf", "full"], convnext_methods=["linear", "ssf"],
                  large_train=2000, large_epochs=3, large_methods=["linear", "ssf", "full"],
                  c_images=200, ablation_task="patch_textures", figure_task="patch_textures",
                  ablations=["6a"]),
    # sized to about 75 minutes on 2 cores (2 runs at a time); --seeds 0,1,2 gives mean +- std
    "full": dict(seeds=[0], epochs=12, tasks=TASKS, vit_methods=VIT_METHODS,
                 convnext_methods=CONVNEXT_METHODS, large_train=5000, large_epochs=8,
                 large_methods=["linear", "bias", "ssf", "full"], c_images=1000,
                 ablation_task="patch_textures", figure_task="patch_textures",
                 ablations=["6a", "6b", "6c", "6d"]),
}


def backbones() -> dict:
    from scaleshift.backbones.embedded import EMBEDDED
    vit = [n for n, e in EMBEDDED.items() if "vit" in e["timm_name"]]
    convnext = [n for n, e in EMBEDDED.items() if "convnext" in e["timm_name"]]
    return {"vit": vit[0], "convnext": convnext[0] if convnext else None}


BASE = dict(pretrained=True, input_size=32, train_split="train800", val_split="val200", test_split="test",
            augment="vtab", batch_size=64, warmup_epochs=2, weight_decay=0.05, protocol="clean",
            test_every_epoch=False, log_every=1000)


def run_one(job: tuple[str, str, dict]) -> tuple[str, float | None, float]:
    """One engine run in its own directory; an interrupted run continues from its checkpoint.
    Returns its reported top-1 (the val top-1 of a selection run without a test split)."""
    runs, name, config = job
    out = Path(runs) / name
    cfg = make_config({**config, "out_dir": str(out)})
    started = time.time()
    results = train(cfg, resume=(out / "checkpoint.pt").is_file())
    reported = results["reported"]
    return name, reported.get("top1", reported.get("val_top1")), time.time() - started


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["TQDM_DISABLE"] = "1"   # runs side by side would draw their bars over each other


def execute(runs: Path, plan: dict[str, dict], jobs: int, base: dict = BASE) -> None:
    """Run every planned run (`base` + its overrides) that has no results.json yet, `jobs` at a
    time (each process gets cpus // jobs threads: small models use one process per core better
    than two threads)."""
    todo = [(str(runs), name, {**base, **overrides}) for name, overrides in plan.items()
            if not (runs / name / "results.json").is_file()]
    print(f"{len(plan) - len(todo)} of {len(plan)} runs done, {len(todo)} to go, {jobs} at a time",
          flush=True)
    if not todo:
        return
    started, threads = time.time(), max(1, (os.cpu_count() or 1) // jobs)
    pool = multiprocessing.get_context("spawn").Pool(jobs, _worker_init, (threads,)) if jobs > 1 else None
    # SIGTERM (kill, a CI timeout) must take the workers down too; an interrupted run resumes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("mini_repro: terminated; rerun to resume"))
    try:
        outcomes = pool.imap_unordered(run_one, todo) if pool else map(run_one, todo)
        for done, (name, top1, seconds) in enumerate(progress(outcomes, "runs", len(todo)), 1):
            eta = (time.time() - started) / done * (len(todo) - done)
            shown = "-" if top1 is None else f"{top1:.2f}"
            say(f"[{done}/{len(todo)}] {name}: top-1 {shown} in {seconds:.0f}s; ETA {eta / 60:.1f} min")
    finally:
        if pool:
            pool.terminate()
            pool.join()


def result(runs: Path, name: str) -> dict | None:
    """A finished run's results.json, or None while it is pending."""
    path = runs / name / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def pending_line(what: list[str]) -> list[str]:
    return [f"Pending (not finished yet, rerun the command to continue): {', '.join(what)}.", ""] if what else []


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def robustness_table(title: str, errors: dict, keys: list[str], seeds: list[int],
                     corruptions: list[str], align: str = "---") -> tuple[list[str], dict]:
    """Error % per corruption (mean over the 5 severities and the seeds) and mCE against full
    fine-tuning of the same seed (= 100), from errors["{key}/{seed}/{corruption}/{severity}"]
    and errors["{key}/{seed}/clean"]; align is the markdown alignment of the number columns."""
    def err(key, seed, corruption):   # summed over the 5 severities
        return sum(errors[f"{key}/{seed}/{corruption}/{s}"] for s in range(1, 6))
    lines = [title, "", "| method | clean err | " + " | ".join(corruptions) + " | mCE |",
             "|---" + f"|{align}" * (len(corruptions) + 2) + "|"]
    data = {}
    for key in keys:
        per = {c: 100 * statistics.mean(err(key, s, c) / 5 for s in seeds) for c in corruptions}
        mce = [100 * statistics.mean(err(key, s, c) / max(err("full", s, c), 1e-9) for c in corruptions)
               for s in seeds]
        clean = 100 * statistics.mean(errors[f"{key}/{s}/clean"] for s in seeds)
        data[key] = dict(clean_error=clean, per_corruption=per, mce=mce)
        lines.append(f"| {key} | {clean:.1f} | " + " | ".join(f"{per[c]:.1f}" for c in corruptions)
                     + f" | {mean_std(mce)} |")
    return lines + [""], data


def suite_table(results: dict, tasks: list[str], methods: list[str], label: str) -> list[str]:
    groups = [g for g, ts in GROUPS.items() if any(t in tasks for t in ts)]
    lines = [f"| {label} | " + " | ".join(tasks) + " | " + " | ".join(groups) + " | mean | params (M) |",
             "|---" * (len(tasks) + len(groups) + 3) + "|"]
    for method in methods:
        per_task = {t: [r["reported"]["top1"] for r in results.get((method, t), [])] for t in tasks}
        if not any(per_task.values()):
            continue
        seeds = min(len(v) for v in per_task.values())
        # mean over tasks per seed, then mean +- std over seeds
        task_means = [statistics.mean(per_task[t][s] for t in tasks) for s in range(seeds)]
        group_cells = [mean_std([statistics.mean(per_task[t][s] for t in GROUPS[g] if t in tasks)
                                 for s in range(seeds)]) for g in groups]
        params = statistics.mean(r["trainable_params"] for t in tasks for r in results[(method, t)]) / 1e6
        lines.append(f"| {method} | " + " | ".join(mean_std(per_task[t]) for t in tasks) + " | "
                     + " | ".join(group_cells) + f" | {mean_std(task_means)} | {params:.3f} |")
    return lines


def plan_a(p: dict, nets: dict, only_net: str | None = None) -> dict:
    return {f"a/{net}/{task}/{method}/seed{seed}": dict(
                model=nets[net], method=method, method_options=OPTIONS.get(method, {}), dataset=task,
                dataset_options={"seed": seed}, seed=seed, epochs=p["epochs"], lr=LR[method],
                cache_features=method == "linear")
            for net, methods in (("vit", p["vit_methods"]), ("convnext", p["convnext_methods"]))
            if nets.get(net) and only_net in (None, net)
            for method in methods for task in p["tasks"] for seed in p["seeds"]}


def experiment_a(p: dict, runs: Path, nets: dict) -> tuple[list[str], dict]:
    lines, data = ["## (a) 1k-sample suite (VTAB-1k protocol), top-1 % on test, clean protocol", ""], {}
    for net, methods in (("vit", p["vit_methods"]), ("convnext", p["convnext_methods"])):
        if nets.get(net) is None:
            continue
        results = {(method, task): [result(runs, f"a/{net}/{task}/{method}/seed{seed}") for seed in p["seeds"]]
                   for method in methods for task in p["tasks"]}
        done = [m for m in methods if all(r is not None for t in p["tasks"] for r in results[(m, t)])]
        results = {k: v for k, v in results.items() if k[0] in done}
        lines += [f"### {net}: {nets[net]} (mean ± std over seeds {p['seeds']})", "",
                  *(suite_table(results, p["tasks"], done, "method") + [""] if done else []),
                  *pending_line([m for m in methods if m not in done])]
        data[net] = {f"{m}/{t}": [r["reported"]["top1"] for r in rs] for (m, t), rs in results.items()}
    return lines, data


def plan_b(p: dict, nets: dict) -> dict:
    return {f"b/{method}": dict(
                model=nets["vit"], method=method, method_options=OPTIONS.get(method, {}),
                dataset="fashion_mnist", train_split="train", train_offset=1000, train_limit=p["large_train"],
                val_split="val200", dataset_options={"seed": 0}, seed=0, epochs=p["large_epochs"],
                lr=LR[method])
            for method in p["large_methods"]}


def experiment_b(p: dict, runs: Path, nets: dict) -> tuple[list[str], dict]:
    lines = [f"## (b) Large data: fashion-mnist, {p['large_train']} training images (items "
             f"1000.. of the seeded train stream; val200 = items 800..999), top-1 % on the "
             f"10,000 test images", "",
             "| method | top-1 | selected epoch | params (M) |", "|---|---|---|---|"]
    data = {}
    pending = []
    for method in p["large_methods"]:
        r = result(runs, f"b/{method}")
        if r is None:
            pending.append(method)
            continue
        data[method] = r["reported"]["top1"]
        lines.append(f"| {method} | {r['reported']['top1']:.2f} | {r['reported']['epoch']} | "
                     f"{r['trainable_params'] / 1e6:.3f} |")
    return lines + [""] + pending_line(pending), data


@torch.no_grad()
def experiment_c(p: dict, runs: Path, nets: dict) -> tuple[list[str], dict]:
    from torch.utils.data import DataLoader, Subset

    from scaleshift.data import build_dataset, build_transform, get_dataset_spec
    from scaleshift.runs import load_run
    spec = get_dataset_spec("fashion_mnist_c")
    corrupted = [s for s in spec.splits if s != "clean"]
    errors = {}
    methods = [m for m in p["large_methods"] if result(runs, f"b/{m}") is not None]
    if "full" not in methods:
        return ["## (c) Robustness: pending (needs the (b) runs, full fine-tuning at least)", ""], {}
    for method in methods:
        _, model = load_run(runs / f"b/{method}", merged=method not in ("adapter",))
        model.eval()
        transform = build_transform("vtab", model, False)
        for split in ["clean", *corrupted]:
            dataset = build_dataset("fashion_mnist_c", split=split, transform=transform)
            subset = Subset(dataset, range(min(p["c_images"], len(dataset))))
            hits = total = 0
            for images, labels in DataLoader(subset, batch_size=256):
                hits += (model(images).argmax(1) == torch.as_tensor(labels)).sum().item()
                total += len(labels)
            errors[(method, split)] = 1 - hits / total
    names = sorted({s.split("/")[0] for s in corrupted})
    lines = [f"## (c) Robustness: fashion-mnist-C ({p['c_images']} images per split), "
             f"error % per corruption (mean over 5 severities), mCE relative to full fine-tuning", "",
             "| method | clean err | " + " | ".join(names) + " | mCE |", "|---" * (len(names) + 3) + "|"]
    data = {}
    for method in methods:
        per = {c: statistics.mean(errors[(method, f"{c}/{s}")] for s in range(1, 6)) for c in names}
        ce = [sum(errors[(method, f"{c}/{s}")] for s in range(1, 6)) /
              max(sum(errors[("full", f"{c}/{s}")] for s in range(1, 6)), 1e-9) for c in names]
        mce = 100 * statistics.mean(ce)
        data[method] = dict(clean=errors[(method, "clean")], per_corruption=per, mce=mce)
        lines.append(f"| {method} | {100 * errors[(method, 'clean')]:.1f} | "
                     + " | ".join(f"{100 * per[c]:.1f}" for c in names) + f" | {mce:.1f} |")
    return lines + [""], data


def ablation_name(task: str, label: str, seed: int) -> str:
    if label in ("all layers", "init normal"):      # plain SSF: the same run as in (a)
        return f"a/vit/{task}/ssf/seed{seed}"
    return f"d/{task}/{label.replace(' ', '_').replace('=', '')}/seed{seed}"


def plan_d(p: dict, nets: dict) -> dict:
    task = p["ablation_task"]
    return {ablation_name(task, label, seed): dict(
                model=nets["vit"], method="ssf", method_options=options, dataset=task,
                dataset_options={"seed": seed}, seed=seed, epochs=p["epochs"], lr=LR["ssf"])
            for table, label, options in ABLATIONS if table in p["ablations"] for seed in p["seeds"]}


def experiment_d(p: dict, runs: Path, nets: dict) -> tuple[list[str], dict]:
    task = p["ablation_task"]
    lines = [f"## (d) SSF ablations (paper Table 6) on {task}, top-1 % (mean ± std over seeds)", "",
             "| table | setting | top-1 | params (M) |", "|---|---|---|---|"]
    data, pending = {}, []
    for table, label, options in ABLATIONS:
        if table not in p["ablations"]:
            continue
        results = [result(runs, ablation_name(task, label, seed)) for seed in p["seeds"]]
        if any(r is None for r in results):
            pending.append(f"{table} {label}")
            continue
        top1 = [r["reported"]["top1"] for r in results]
        data[f"{table} {label}"] = top1
        lines.append(f"| {table} | {label} | {mean_std(top1)} | "
                     f"{results[0]['trainable_params'] / 1e6:.3f} |")
    return lines + [""] + pending_line(pending), data


def figures(p: dict, runs: Path, out: Path) -> list[str]:
    """Paper Figure 4 (weights: pretrained vs merged SSF vs full) and Figure 5 (linear CKA per
    block against full fine-tuning) from the ViT runs of (a) on the figure task, seed 0."""
    from scaleshift.analyze import plot_similarity, plot_weights, similarity, weight_histograms
    task, seed = p["figure_task"], p["seeds"][0]
    run_of = {m: runs / f"a/vit/{task}/{m}/seed{seed}" for m in p["vit_methods"]}
    if not all((run_of[m] / "results.json").is_file() for m in ("full", "ssf")):
        return []
    hist = weight_histograms(run_of["ssf"], run_of["full"])
    write_json(out / "fig4_weights.json", hist)
    plot_weights(hist, out / "fig4_weights.png", f"ViT backbone parameters after fine-tuning on {task}")
    others = [m for m in ("linear", "vpt_deep", "ssf") if m in run_of and (run_of[m] / "results.json").is_file()]
    result = similarity([run_of["full"]] + [run_of[m] for m in others], task, "test", 500)
    write_json(out / "fig5_similarity.json", result)
    plot_similarity(result, out / "fig5_similarity.png")
    cka = {r["method"]: r["cka"] for r in result["runs"]}
    return [f"## Figures 4 and 5 (ViT, {task}, seed {seed})", "",
            "![Figure 4](fig4_weights.png)", "", "![Figure 5](fig5_similarity.png)", "",
            "Linear CKA with full fine-tuning per block (500 test images):", "",
            "| method | " + " | ".join(f"block {i + 1}" for i in range(len(next(iter(cka.values()))))) + " |",
            "|---" * (1 + len(next(iter(cka.values())))) + "|",
            *[f"| {m} | " + " | ".join(f"{v:.3f}" for v in values) + " |" for m, values in cka.items()], ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--only", default="a,b,c,d", help="experiments to run, e.g. a,d")
    parser.add_argument("--runs", default=None, help="run directories (default runs/mini/PRESET)")
    parser.add_argument("--out", default=None, help="tables (default results/mini/PRESET)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (processes)")
    parser.add_argument("--seeds", default=None, help="override the preset's seeds, e.g. 0,1,2")
    parser.add_argument("--tables-only", action="store_true",
                        help="train nothing: tables from the finished runs, the rest marked pending")
    args = parser.parse_args()
    preset = dict(PRESETS[args.preset])
    if args.seeds:
        preset["seeds"] = [int(s) for s in args.seeds.split(",")]
    runs = Path(args.runs or ROOT / "runs" / "mini" / args.preset)
    out = Path(args.out or ROOT / "results" / "mini" / args.preset)
    nets = backbones()
    started = time.time()
    only = args.only.split(",")
    plan = {}
    # the ViT's runs first, the ConvNeXt's last
    for key, planner in (("a", lambda p, n: plan_a(p, n, "vit")), ("b", plan_b), ("c", plan_b),
                         ("d", plan_d), ("a", lambda p, n: plan_a(p, n, "convnext"))):
        if key in only:
            plan.update(planner(preset, nets))
    if not args.tables_only:
        execute(runs, plan, args.jobs)
    finished = sum(result(runs, name) is not None for name in plan)
    sections, data = [], {}
    for key, experiment in (("a", experiment_a), ("b", experiment_b), ("c", experiment_c),
                            ("d", experiment_d)):
        if key in only:
            lines, data[key] = experiment(preset, runs, nets)
            sections += lines
    if "a" in only:
        sections += figures(preset, runs, out)
    run_seconds = sum((result(runs, name) or {}).get("wall_time_s", 0) for name in plan)
    partial = f" (PARTIAL: {finished} of {len(plan)} runs finished)" if finished < len(plan) else ""
    header = [f"# Mini reproduction, preset {args.preset}{partial}", "",
              f"Command: `python benchmarks/mini_repro.py --preset {args.preset} --only {args.only}"
              + (f" --seeds {args.seeds}" if args.seeds else "") + "`; "
              f"backbones {nets}; {len(plan)} runs, {run_seconds / 60:.0f} min of run time in all "
              f"({args.jobs} at a time on {machine_info()['cpus']} CPUs; this invocation "
              f"{time.time() - started:.0f} s), torch {torch.__version__}.", ""]
    write_text(out / "results.md", "\n".join(header + sections) + "\n")
    write_json(out / "results.json", dict(preset=args.preset, only=args.only, backbones=nets,
                                          machine=machine_info(), data={k: v for k, v in data.items()},
                                          runs=len(plan), finished=finished, run_seconds=round(run_seconds, 1),
                                          wall_time_s=round(time.time() - started, 1)))
    print("\n".join(header + sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())

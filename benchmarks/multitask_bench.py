"""One backbone serving N SSF tasks (scaleshift.multitask) against N separate merged models.

    python benchmarks/multitask_bench.py                               # embedded ViT, N = 3 and 10
    python benchmarks/multitask_bench.py --model vit_small_patch16_224 --tasks 3 --batch-size 16
    python benchmarks/multitask_bench.py --adapters runs/a,runs/b,runs/c   # your own adapters

Without --adapters, N SSF adapters are made on the backbone (random non-identity scale/shift and
heads, seeds 0..N-1), saved with save_adapter and loaded back through the normal path. Each
batch mixes the N tasks (task of each image drawn at random). The multi-task model answers the
batch in ONE forward of the unmerged model; the N merged models each answer their own images.
Both are checked to give the same logits, then:
- throughput: images/s over a mixed batch, the two setups interleaved, median of --rounds;
- memory: the bytes of parameters and buffers each setup holds, and the peak RSS growth of a
  fresh process (Linux VmHWM) that builds the setup and answers two batches (glibc told to
  return freed memory at once, as in `scaleshift bench`).
Results go to --out (Markdown + JSON, with machine and versions).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import scaleshift
from scaleshift.runs import machine_info
from scaleshift.io import write_json, write_text
from scaleshift.merge import perturb_trainable
from scaleshift.adapter_files import backbone_for, read_adapter_config
from scaleshift.models import plain_model
from scaleshift.multitask import MultiTaskModel
from scaleshift.progress import progress, say

ROOT = Path(__file__).resolve().parents[1]


def backbone(meta: dict, pretrained: bool):
    if pretrained:
        return backbone_for(meta)
    torch.manual_seed(0)        # with --random-init every task must see the same random backbone
    return plain_model(meta["base_model"], meta["num_classes"])


def make_adapters(model_name: str, pretrained: bool, tasks: int, classes: int, directory: Path) -> list[Path]:
    paths = []
    for seed in range(tasks):
        model = scaleshift.apply(backbone(dict(model_name=model_name, num_classes=classes), pretrained), "ssf")
        perturb_trainable(model, std=0.1, seed=seed)
        paths.append(scaleshift.save_adapter(model, directory / f"task{seed}"))
    return paths


def build(setup: str, adapters: list[str], pretrained: bool):
    def factory(meta):
        return backbone(meta, pretrained)
    if setup == "multitask":
        return MultiTaskModel.from_adapters(adapters, backbone_factory=factory)
    models = []
    for directory in adapters:
        plain = factory(read_adapter_config(directory))
        models.append(scaleshift.merge(scaleshift.load_adapter(plain, directory)).eval())
    return models


@torch.no_grad()
def answer(setup: str, built, images: torch.Tensor, task_ids: torch.Tensor) -> list[torch.Tensor]:
    if setup == "multitask":
        return built(images, task_ids)
    out: list = [None] * len(images)
    for task, model in enumerate(built):
        rows = (task_ids == task).nonzero().flatten()
        if len(rows):
            for row, logits in zip(rows.tolist(), model(images[rows])):
                out[row] = logits
    return out


def held_bytes(setup: str, built) -> int:
    modules = [built] if setup == "multitask" else built
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def memory_probe(setup: str, adapters: list[str], pretrained: bool, shape: list[int], seed: int) -> dict:
    """Run in a fresh process: peak RSS growth (MiB) while building the setup and answering two
    mixed batches."""
    from scaleshift.bench import proc_status_kb, reset_peak_rss
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(shape, generator=generator)
    task_ids = torch.randint(0, len(adapters), (shape[0],), generator=generator)
    before = reset_peak_rss()
    built = build(setup, adapters, pretrained)
    for _ in range(2):
        answer(setup, built, images, task_ids)
    return dict(peak_growth_mib=(proc_status_kb("VmHWM") - before) / 1024,
                held_mib=held_bytes(setup, built) / 2**20)


def measure_memory(setup: str, adapters: list[str], pretrained: bool, shape: list[int], seed: int) -> dict:
    code = ("import json, sys; sys.path.insert(0, sys.argv[2]); import multitask_bench as b; "
            "print(json.dumps(b.memory_probe(*json.loads(sys.argv[1]))))")
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()),
               MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    args = json.dumps([setup, [str(a) for a in adapters], pretrained, shape, seed])
    proc = subprocess.run([sys.executable, "-c", code, args, str(Path(__file__).parent)],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"memory probe of {setup} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(adapters: list[str], pretrained: bool, batch: int, rounds: int, seed: int = 0) -> dict:
    setups = {s: build(s, adapters, pretrained) for s in ("multitask", "merged")}
    size = setups["merged"][0].pretrained_cfg.get("input_size", (3, 224, 224))
    shape = [batch, *size]
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(shape, generator=generator)
    task_ids = torch.randint(0, len(adapters), (batch,), generator=generator)
    outputs = {s: answer(s, b, images, task_ids) for s, b in setups.items()}
    max_diff = max((a - b).abs().max().item() for a, b in zip(outputs["multitask"], outputs["merged"]))
    same_top1 = all(a.argmax() == b.argmax() for a, b in zip(outputs["multitask"], outputs["merged"]))
    seconds = {s: [] for s in setups}
    for round_index in range(rounds + 1):      # round 0 warms up
        for setup in (("multitask", "merged") if round_index % 2 else ("merged", "multitask")):
            start = time.perf_counter()
            answer(setup, setups[setup], images, task_ids)
            if round_index:
                seconds[setup].append(time.perf_counter() - start)
    memory = {s: measure_memory(s, adapters, pretrained, shape, seed) for s in setups}
    rows = {s: dict(images_per_s=batch / statistics.median(seconds[s]), **memory[s]) for s in setups}
    return dict(tasks=len(adapters), batch=batch, input=shape, rounds=rounds, max_abs_logit_diff=max_diff,
                same_predictions=bool(same_top1), rows=rows,
                ratios=dict(throughput=rows["multitask"]["images_per_s"] / rows["merged"]["images_per_s"],
                            held=rows["multitask"]["held_mib"] / rows["merged"]["held_mib"],
                            peak=rows["multitask"]["peak_growth_mib"] / rows["merged"]["peak_growth_mib"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="scaleshift_vit32")
    ap.add_argument("--random-init", action="store_true", help="random backbone (cost only)")
    ap.add_argument("--tasks", default="3,10", help="comma-separated N values")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--adapters", default=None, help="comma-separated adapter directories")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="default results/deploy/multitask_<model>")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pretrained = not args.random_init
    started = time.time()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.adapters:
            lists = [args.adapters.split(",")]
        else:
            counts = [int(n) for n in args.tasks.split(",")]
            made = make_adapters(args.model, pretrained, max(counts), args.classes, Path(tmp))
            lists = [[str(p) for p in made[:n]] for n in counts]
        for adapters in progress(lists, "task counts"):
            runs.append(bench(adapters, pretrained, args.batch_size, args.rounds))
            r = runs[-1]
            say(f"N={r['tasks']}: multi-task {r['rows']['multitask']['images_per_s']:.0f} img/s, "
                f"{r['rows']['multitask']['held_mib']:.1f} MiB held; {r['tasks']} merged models "
                f"{r['rows']['merged']['images_per_s']:.0f} img/s, {r['rows']['merged']['held_mib']:.1f} "
                f"MiB held; max logit diff {r['max_abs_logit_diff']:.1e}")
    report = dict(command=" ".join(["python benchmarks/multitask_bench.py", *(sys.argv[1:] if argv is None else argv)]),
                  model=args.model, pretrained=pretrained, runs=runs, machine=machine_info(),
                  threads=args.threads, seconds=round(time.time() - started, 1))
    out = Path(args.out or ROOT / "results" / "deploy" / f"multitask_{args.model}")
    write_json(out.with_suffix(".json"), report)
    lines = [f"# Multi-task serving vs N merged models: {args.model}", "",
             f"Command: `{report['command']}`; batch {args.batch_size} of mixed tasks, median of "
             f"{args.rounds} rounds; {os.cpu_count()} CPUs, {args.threads} threads, torch {torch.__version__}.",
             "Held = bytes of parameters and buffers; peak = peak RSS growth of a fresh process that builds "
             "the setup and answers two batches.", "",
             "| N | setup | images/s | held MiB | peak MiB | max logit diff | same predictions |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for r in runs:
        for setup, label in (("multitask", "one backbone, N adapters, one forward"),
                             ("merged", "N merged models")):
            row = r["rows"][setup]
            lines.append(f"| {r['tasks']} | {label} | {row['images_per_s']:.0f} | {row['held_mib']:.1f} | "
                         f"{row['peak_growth_mib']:.1f} | {r['max_abs_logit_diff']:.1e} | {r['same_predictions']} |")
    lines += ["", "Ratios (multi-task / merged): " + "; ".join(
        f"N={r['tasks']}: throughput {r['ratios']['throughput']:.2f}, held {r['ratios']['held']:.2f}, "
        f"peak {r['ratios']['peak']:.2f}" for r in runs)]
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

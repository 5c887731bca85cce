"""Linear probing of scaleshift's pretrained backbones vs the same architecture at random init,
on the 1k suite in the VTAB-1k protocol.

For each task: images resized to 32x32 (bicubic), scaled to [0, 1], normalised with
mean = std = 0.5; frozen features = the classifier's input (ViT: mean of the normed patch tokens,
global_pool="avg"; ConvNeXt: pooled + head norm), i.e. what the `linear` method trains a head
on; standardised; sklearn
LogisticRegression fitted on train800 for each C in the grid, C chosen on val200, refitted on
train800val200 with that C; top-1 on the full test split. Same procedure for both models.

    python benchmarks/probe_suite.py                       # every embedded backbone
    python benchmarks/probe_suite.py --arch vit --weights runs/pretrain/vit/checkpoint.pt \
        --max-test 1000 --out /tmp/pilot                    # a pilot on a checkpoint
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scaleshift.io import write_json, write_text
from scaleshift.progress import progress, say

TASKS = ("digits", "patch_textures", "patch_photos", "patch_medical", "faces", "fashion_mnist",
         "struct_location", "struct_orientation", "struct_count", "struct_distance")
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
SIZE = 32


def images_of(name: str, split: str, seed: int, limit: int | None = None):
    from PIL import Image

    from scaleshift.data import build_dataset
    ds = build_dataset(name, split=split, seed=seed)
    n = len(ds) if limit is None else min(limit, len(ds))
    xs, ys = [], []
    for i in range(n):
        image, label = ds[i]
        image = image.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
        xs.append(np.asarray(image, dtype=np.uint8))
        ys.append(int(label))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div(255)
    return (x - 0.5) / 0.5, np.array(ys)


@torch.no_grad()
def features(model, x: torch.Tensor, batch: int = 500) -> np.ndarray:
    model.eval()       # the classifier's input: what the `linear` method trains a head on
    return torch.cat([model.forward_head(model.forward_features(x[i:i + batch]), pre_logits=True)
                      for i in range(0, len(x), batch)]).numpy().astype(np.float64)


def probe(f: dict, y: dict) -> dict:
    from scaleshift.extras import require
    LogisticRegression = require("sklearn.linear_model", "the probe suite").LogisticRegression
    StandardScaler = require("sklearn.preprocessing", "the probe suite").StandardScaler

    def fit(x, labels, c):
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x), labels)
        return lambda z: clf.predict(scaler.transform(z))

    val = {c: float((fit(f["train800"], y["train800"], c)(f["val200"]) == y["val200"]).mean())
           for c in C_GRID}
    best = max(C_GRID, key=lambda c: (val[c], -c))      # ties: the stronger regularisation
    full_x = np.concatenate([f["train800"], f["val200"]])
    full_y = np.concatenate([y["train800"], y["val200"]])
    test = float((fit(full_x, full_y, best)(f["test"]) == y["test"]).mean())
    return dict(C=best, val=100 * val[best], test=100 * test)


def load_model(arch: str | None, weights: str | None, embedded: str | None, seed: int):
    """(random-init model, pretrained model) of one architecture."""
    from scaleshift.models import create_model
    if embedded:
        from scaleshift.backbones.embedded import EMBEDDED
        spec = EMBEDDED[embedded]
        timm_name, kwargs = spec["timm_name"], spec["kwargs"]
        pretrained = create_model(embedded, num_classes=0, pretrained=True)
    else:
        from scaleshift.pretrain import ARCHS
        timm_name, kwargs = ARCHS[arch]["timm_name"], ARCHS[arch]["kwargs"]
        pretrained = create_model(timm_name, num_classes=0, **kwargs)
        if weights.endswith(".pt"):          # a pretraining checkpoint
            state = torch.load(weights, map_location="cpu", weights_only=False)
            pretrained.load_state_dict(state["model"])
        else:
            pretrained = create_model(timm_name, num_classes=0, pretrained=weights, **kwargs)
    torch.manual_seed(seed)
    random = create_model(timm_name, num_classes=0, **kwargs)
    return random, pretrained


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embedded", default=None,
                    help="comma-separated embedded backbone names (default: all)")
    ap.add_argument("--arch", default=None, help="a scaleshift.pretrain architecture (pilots)")
    ap.add_argument("--weights", default=None, help="with --arch: checkpoint.pt or .safetensors")
    ap.add_argument("--label", default=None, help="with --arch: the candidate's name in the table")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seed", type=int, default=0, help="train800/val200 draw and random init")
    ap.add_argument("--max-test", type=int, default=None, help="pilots: first N test items")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/pretrain/probe_suite")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits   # BLAS threads spin badly on a shared CPU
    threadpool_limits(args.threads)

    models = {}
    if args.embedded or not args.arch:
        from scaleshift.backbones.embedded import embedded_names
        names = args.embedded.split(",") if args.embedded else embedded_names()
        models = {n: load_model(None, None, n, args.seed) for n in names}
    if args.arch:     # with --embedded too: both in one table, on the same data
        if not args.weights:
            ap.error("--arch needs --weights")
        models[args.label or args.arch] = load_model(args.arch, args.weights, None, args.seed)
    tasks = args.tasks.split(",")

    rows = {name: {} for name in models}
    t0 = time.time()
    for task in progress(tasks, "tasks"):
        data = {s: images_of(task, s, args.seed, args.max_test if s == "test" else None)
                for s in ("train800", "val200", "test")}
        y = {s: v[1] for s, v in data.items()}
        for name, (random, pretrained) in models.items():
            res = {}
            for kind, model in (("random", random), ("pretrained", pretrained)):
                f = {s: features(model, v[0]) for s, v in data.items()}
                res[kind] = probe(f, y)
            rows[name][task] = res
            say(f"[{time.time() - t0:5.0f}s] {name:24s} {task:20s} random "
                f"{res['random']['test']:5.1f}  pretrained {res['pretrained']['test']:5.1f}  "
                f"(n_test {len(y['test'])})")

    means = {name: {k: float(np.mean([r[k]["test"] for r in per.values()]))
                    for k in ("random", "pretrained")} for name, per in rows.items()}
    report = dict(
        command="python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        protocol="VTAB-1k: fit train800 per C, choose C on val200, refit train800val200, "
                 "top-1 on test" + (f" (first {args.max_test} test items)" if args.max_test else
                                    " (full test split)"),
        probe="sklearn LogisticRegression(max_iter=2000) on StandardScaler features, C grid "
              + str(list(C_GRID)),
        features="the classifier's input (forward_head pre_logits): ViT mean of normed patch tokens; "
                 "ConvNeXt pool + head norm",
        seed=args.seed, tasks=tasks, results=rows, means=means,
        machine=dict(cpu_count=os.cpu_count(), torch_threads=args.threads,
                     torch=torch.__version__, python=platform.python_version(),
                     platform=platform.platform()),
        seconds=round(time.time() - t0, 1))
    out = Path(args.out)
    write_json(out.with_suffix(".json"), report)
    lines = ["# Linear probe: pretrained vs random init (1k suite, VTAB-1k protocol)", "",
             f"Command: `{report['command']}`", "", f"Protocol: {report['protocol']}.",
             f"Probe: {report['probe']}.", f"Features: {report['features']}.",
             f"Machine: {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{args.threads} threads; {report['seconds']:.0f} s.", ""]
    names = list(rows)
    lines.append("| task | " + " | ".join(f"{n} random | {n} pretrained | delta" for n in names)
                 + " |")
    lines.append("|---|" + "---:|---:|---:|" * len(names))
    for task in tasks:
        cells = []
        for n in names:
            r, p = rows[n][task]["random"]["test"], rows[n][task]["pretrained"]["test"]
            cells += [f"{r:.1f}", f"{p:.1f}", f"{p - r:+.1f}"]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    cells = []
    for n in names:
        r, p = means[n]["random"], means[n]["pretrained"]
        cells += [f"**{r:.2f}**", f"**{p:.2f}**", f"**{p - r:+.2f}**"]
    lines.append("| **mean** | " + " | ".join(cells) + " |")
    if len(names) == 2:
        a, b = names
        diffs = [rows[b][t]["pretrained"]["test"] - rows[a][t]["pretrained"]["test"] for t in tasks]
        lines += ["", f"{b} minus {a} (pretrained probes): mean **{float(np.mean(diffs)):+.2f}** points; "
                  + ", ".join(f"{t} {d:+.1f}" for t, d in zip(tasks, diffs)) + "."]
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines[-len(tasks) - 3:]))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

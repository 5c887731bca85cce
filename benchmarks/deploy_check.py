"""Deployment checks on real SSF runs of the embedded ViT, e.g. the mini reproduction's.

    python benchmarks/deploy_check.py --runs runs/mini/quick/a/vit \
        --tasks digits,patch_textures,struct_count

1. Export of the first task's SSF run: ONNX with the same operator counts as the plain backbone's
   export and onnxruntime parity <= 1e-4; merged safetensors that load with strict=True into
   timm.create_model in a fresh process that never imports scaleshift, with the same logits.
2. Multi-task: the 3 SSF adapters on one backbone answer one batch mixing test images of the 3
   tasks; the answers must equal each task's merged model.
Writes results/deploy/deploy_check.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import scaleshift
from scaleshift.adapter_files import backbone_for, read_adapter_config
from scaleshift.data import build_dataset, build_transform
from scaleshift.runs import load_run
from scaleshift.export import export_onnx, export_safetensors
from scaleshift.io import write_json, write_text
from scaleshift.multitask import MultiTaskModel

ROOT = Path(__file__).resolve().parents[1]
TIMM_ONLY = """
import json, sys
import timm, torch
from safetensors import safe_open
from safetensors.torch import load_file
path, x_path = sys.argv[1], sys.argv[2]
with safe_open(path, "pt") as f:
    meta = f.metadata()
model = timm.create_model(meta["timm_model"], num_classes=int(meta["num_classes"]),
                          **json.loads(meta["timm_kwargs"]))
model.load_state_dict(load_file(path), strict=True)
logits = model.eval()(load_file(x_path)["x"])
print(json.dumps(dict(scaleshift_imported="scaleshift" in sys.modules, logits=logits.tolist())))
"""


def export_checks(run_dir: Path, images: torch.Tensor, tmp: Path) -> dict:
    from safetensors.torch import save_file
    onnx = export_onnx(run_dir, tmp / "merged.onnx")
    weights = export_safetensors(run_dir, tmp / "merged.safetensors")
    save_file({"x": images.contiguous()}, str(tmp / "x.safetensors"))
    proc = subprocess.run([sys.executable, "-c", TIMM_ONLY, weights["path"], str(tmp / "x.safetensors")],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"timm-only load failed:\n{proc.stderr[-2000:]}")
    timm_only = json.loads(proc.stdout.strip().splitlines()[-1])
    _, merged = load_run(run_dir, merged=True)
    with torch.no_grad():
        ours = merged.eval()(images)
    diff = (torch.tensor(timm_only["logits"]) - ours).abs().max().item()
    return dict(run=str(run_dir), onnx_nodes=sum(onnx["op_counts"].values()),
                same_ops_as_plain=onnx["same_ops_as_plain"], onnxruntime_max_abs_diff=onnx["max_abs_diff_vs_torch"],
                onnx_parity=onnx["parity"], safetensors_bytes=weights["bytes"],
                timm_only_strict_load=True, timm_only_imported_scaleshift=timm_only["scaleshift_imported"],
                timm_only_max_abs_logit_diff=diff)


def multitask_check(adapters: list[Path], tasks: list[str], per_task: int) -> dict:
    merged = [scaleshift.merge(scaleshift.load_adapter(backbone_for(read_adapter_config(a)), a)).eval()
              for a in adapters]
    transform = build_transform("vtab", merged[0], False)
    images, task_ids = [], []
    for round_index in range(per_task):          # interleave the tasks inside the batch
        for t, task in enumerate(tasks):
            images.append(build_dataset(task, split="test", transform=transform)[round_index][0])
            task_ids.append(t)
    images = torch.stack(images)
    task_ids = torch.tensor(task_ids)
    multitask = MultiTaskModel.from_adapters(adapters, pretrained=True)
    answers = multitask(images, task_ids)
    with torch.no_grad():
        expected = [merged[t](images[i:i + 1])[0] for i, t in enumerate(task_ids.tolist())]
    diff = max((a - b).abs().max().item() for a, b in zip(answers, expected))
    same = all(a.argmax().item() == b.argmax().item() for a, b in zip(answers, expected))
    return dict(adapters=[str(a) for a in adapters], tasks=tasks, images=len(images),
                max_abs_logit_diff=diff, same_predictions=same)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/mini/quick/a/vit", help="a/vit directory of a mini reproduction")
    ap.add_argument("--tasks", default="digits,patch_textures,struct_count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-task", type=int, default=4, help="test images per task in the mixed batch")
    ap.add_argument("--out", default=str(ROOT / "results" / "deploy" / "deploy_check"))
    args = ap.parse_args(argv)
    tasks = args.tasks.split(",")
    run_dirs = [Path(args.runs) / task / "ssf" / f"seed{args.seed}" for task in tasks]
    missing = [str(r) for r in run_dirs if not (r / "results.json").is_file()]
    if missing:
        sys.exit(f"error: no finished SSF run in {', '.join(missing)}; run "
                 f"`python benchmarks/mini_repro.py --preset quick --only a` first")
    cfg, merged = load_run(run_dirs[0], merged=True)
    dataset = build_dataset(tasks[0], split="test", transform=build_transform("vtab", merged, False))
    images = torch.stack([dataset[i][0] for i in range(8)])
    with tempfile.TemporaryDirectory() as tmp:
        export = export_checks(run_dirs[0], images, Path(tmp))
    multitask = multitask_check([r / "adapter" for r in run_dirs], tasks, args.per_task)
    report = dict(command=" ".join(["python benchmarks/deploy_check.py", *(sys.argv[1:] if argv is None else argv)]),
                  export=export, multitask=multitask)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), report)
    lines = ["# Deployment checks on SSF runs of the embedded ViT", "", f"Command: `{report['command']}`", "",
             f"Export of `{export['run']}`:", "",
             f"- ONNX: {export['onnx_nodes']} nodes, operator counts equal to the plain backbone's export: "
             f"{export['same_ops_as_plain']}; onnxruntime max abs diff vs PyTorch "
             f"{export['onnxruntime_max_abs_diff']:.1e} (<= 1e-4: {export['onnx_parity']})",
             f"- safetensors ({export['safetensors_bytes']:,} bytes): strict load into timm.create_model in a "
             f"process without scaleshift (imported: {export['timm_only_imported_scaleshift']}), max abs logit "
             f"diff vs the merged model {export['timm_only_max_abs_logit_diff']:.1e}", "",
             f"Multi-task: {len(tasks)} adapters ({', '.join(tasks)}) on one backbone, one batch of "
             f"{multitask['images']} test images mixing the tasks: max abs logit diff vs the merged models "
             f"{multitask['max_abs_logit_diff']:.1e}, same predictions: {multitask['same_predictions']}"]
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = export["same_ops_as_plain"] and export["onnx_parity"] and multitask["same_predictions"] \
        and not export["timm_only_imported_scaleshift"] and export["timm_only_max_abs_logit_diff"] <= 1e-4 \
        and multitask["max_abs_logit_diff"] <= 1e-4
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

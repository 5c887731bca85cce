"""`scaleshift demo`: SSF end to end on a small built-in task, offline, in about a minute.

Applies SSF to a small ViT, trains scale/shift + head on scikit-learn's handwritten digits
(real data, bundled with scikit-learn), merges, proves the merged model is the plain timm
architecture with the same predictions, and saves the adapter.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import timm
import timm.optim
import torch
import torch.nn.functional as F

from . import apply, create_model, merge, save_adapter, total_parameters, trainable_parameters
from .io import write_json

DEMO_MODEL = dict(name="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=6)


def digits_tensors(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0          # (N, 8, 8) in [0, 1]
    images = F.interpolate(images[:, None], size=32, mode="bilinear", align_corners=False)
    images = ((images - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()     # (N, 3, 32, 32)
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(order))
    return images[order[:cut]], labels[order[:cut]], images[order[cut:]], labels[order[cut:]]


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in images.split(256)])


def run_demo(out_dir: str = "runs/demo", steps: int = 300, seed: int = 0) -> dict:
    start = time.time()
    torch.manual_seed(seed)
    out = Path(out_dir)
    x_train, y_train, x_test, y_test = digits_tensors(seed)
    kwargs = {k: v for k, v in DEMO_MODEL.items() if k != "name"}
    model = create_model(DEMO_MODEL["name"], num_classes=10, **kwargs)
    apply(model, "ssf")
    print(f"[demo] {DEMO_MODEL['name']} {kwargs} + SSF: {trainable_parameters(model):,} of "
          f"{total_parameters(model):,} parameters train; digits {len(y_train)} train / "
          f"{len(y_test)} test", flush=True)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=3e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps,
                                                   pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(1, steps + 1):
        batch = torch.randint(len(y_train), (64,), generator=generator)
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps:
            print(f"[demo] step {step}/{steps} loss {loss.item():.3f} "
                  f"({time.time() - start:.0f}s)", flush=True)
            model.train()

    logits = predict(model, x_test)
    merged = merge(model)
    plain = timm.create_model(DEMO_MODEL["name"], num_classes=10, **kwargs)
    plain.load_state_dict(merged.state_dict(), strict=True)   # the plain architecture, no scaleshift
    merged_logits = predict(plain, x_test)
    adapter_dir = save_adapter(model, out / "adapter")
    adapter_bytes = sum(f.stat().st_size for f in adapter_dir.iterdir())
    results = dict(
        task="digits", model=DEMO_MODEL, method="ssf", steps=steps, seed=seed,
        top1=float((logits.argmax(1) == y_test).float().mean() * 100),
        top1_merged=float((merged_logits.argmax(1) == y_test).float().mean() * 100),
        predictions_identical=bool(torch.equal(logits.argmax(1), merged_logits.argmax(1))),
        max_abs_logit_diff=float((logits - merged_logits).abs().max()),
        trainable_params=trainable_parameters(model),
        extra_params_after_merge=total_parameters(plain) - total_parameters(
            timm.create_model(DEMO_MODEL["name"], num_classes=10, **kwargs)),
        adapter_bytes=adapter_bytes, seconds=round(time.time() - start, 1),
        chance_top1=float(100 / 10), class_balance=np.bincount(y_test.numpy()).tolist())
    write_json(out / "results.json", results)
    print(json.dumps({k: results[k] for k in ("top1", "top1_merged", "predictions_identical",
                                               "max_abs_logit_diff", "extra_params_after_merge",
                                               "adapter_bytes", "seconds")}, indent=1))
    print(f"[demo] adapter: {adapter_dir}  results: {out / 'results.json'}")
    return results

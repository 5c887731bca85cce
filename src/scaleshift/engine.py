"""The training engine: one code path for one process and for torchrun.

    scaleshift train recipes/builtin/digits_ssf.yaml epochs=5
    torchrun --nproc_per_node=2 -m scaleshift.cli train recipes/builtin/digits_ssf.yaml

Phases, in order: distributed setup -> seeds -> model + method -> data -> optimizer, schedule,
mixup, EMA -> (resume) -> epochs of train + evaluate + checkpoint -> results + adapter.
Only rank 0 writes. Checkpoints hold the trainable parameters, norm statistics, optimizer,
scheduler, EMA, RNG states and the history; they are written atomically after every epoch, so a
killed run resumes from its last finished epoch and ends exactly as an uninterrupted one.
"""
from __future__ import annotations

import math
import os
import platform
import random
import resource
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import timm
import timm.optim
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import yaml
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from . import __version__
from .adapter_files import adapter_state, save_adapter
from .config import RunConfig
from .errors import ScaleshiftError
from .io import atomic_path, write_json
from .methods import apply, total_parameters, trainable_parameters

CHECKPOINT = "checkpoint.pt"
SELECTED = "selected.pt"       # trainable state of the val-selected epoch (test_every_epoch=false)


class TrainingDiverged(ScaleshiftError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- setup
def setup_distributed(device_choice: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise ScaleshiftError("device=cuda but no CUDA device is available; use device=cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(), python=list(random.getstate()[1]),
                numpy_keys=torch.from_numpy(np_state[1].astype(np.int64)),
                numpy_pos=int(np_state[2]), numpy_gauss=[int(np_state[3]), float(np_state[4])])


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32),
                         state["numpy_pos"], state["numpy_gauss"][0], state["numpy_gauss"][1]))


# ----------------------------------------------------------------------------- data
class GlobalBatchSampler(Sampler):
    """Per epoch, one seeded permutation; each global batch is split across ranks by
    striding, so N processes see exactly the samples one process would (same global batch)."""

    def __init__(self, size: int, global_batch: int, rank: int, world: int, seed: int):
        if global_batch % world:
            raise ScaleshiftError(f"batch_size {global_batch} must be divisible by the "
                                  f"{world} processes")
        if size < global_batch:
            raise ScaleshiftError(f"the training split has {size} samples, fewer than "
                                  f"batch_size {global_batch}; lower batch_size")
        self.size, self.batch, self.rank, self.world, self.seed = size, global_batch, rank, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.batch

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for i in range(len(self)):
            yield order[i * self.batch:(i + 1) * self.batch][self.rank::self.world].tolist()


def build_data(cfg: RunConfig, model: nn.Module) -> tuple[Dataset, Dataset | None, Dataset]:
    from .data import build_dataset, build_transform
    train_tf = build_transform(cfg.augment, model, is_training=True, input_size=cfg.input_size)
    eval_tf = build_transform(cfg.augment, model, is_training=False, input_size=cfg.input_size)

    def load(split, tf):
        return build_dataset(cfg.dataset, root=cfg.data_root, split=split, transform=tf,
                             **cfg.dataset_options)
    val = load(cfg.val_split, eval_tf) if cfg.val_split else None
    train_set = load(cfg.train_split, train_tf)
    if cfg.train_offset or cfg.train_limit is not None:
        stop = len(train_set) if cfg.train_limit is None else cfg.train_offset + cfg.train_limit
        if stop > len(train_set):
            raise ScaleshiftError(f"train_offset + train_limit = {stop} exceeds the "
                                  f"{len(train_set)} items of split {cfg.train_split!r}")
        train_set = torch.utils.data.Subset(train_set, range(cfg.train_offset, stop))
    return train_set, val, load(cfg.test_split, eval_tf)


def dataset_classes(cfg: RunConfig) -> int:
    from .data import build_dataset, get_dataset_spec
    spec = get_dataset_spec(cfg.dataset)
    if spec.num_classes is not None:
        return spec.num_classes
    dataset = build_dataset(cfg.dataset, root=cfg.data_root, split=cfg.train_split,
                            **cfg.dataset_options)
    return len(dataset.classes)


def eval_loader(dataset: Dataset, batch: int, rank: int, world: int, workers: int) -> DataLoader:
    shard = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
    return DataLoader(shard, batch_size=batch, shuffle=False, num_workers=workers)


@torch.no_grad()
def cache_features(model: nn.Module, dataset: Dataset, batch: int, device, autocast) -> TensorDataset:
    """Backbone features (pre-logits) of every sample, once, for linear probing on a cache."""
    model.eval()
    feats, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch, shuffle=False):
        with autocast():
            feats.append(model.forward_head(model.forward_features(images.to(device)),
                                            pre_logits=True).float().cpu())
        labels.append(torch.as_tensor(targets))
    return TensorDataset(torch.cat(feats), torch.cat(labels))


# ----------------------------------------------------------------------------- steps
def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise ScaleshiftError("precision=fp16 needs CUDA; use precision=bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def all_reduce_sum(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(values)
    return values


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device, autocast, world: int) -> dict:
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)    # loss sum, top-1 hits, top-5 hits, count
    for images, targets in loader:
        images, targets = images.to(device), torch.as_tensor(targets).to(device)
        with autocast():
            logits = model(images).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        totals += torch.tensor([F.cross_entropy(logits, targets, reduction="sum").item(),
                                (top[:, 0] == targets).sum().item(),
                                (top == targets[:, None]).any(1).sum().item(), len(targets)],
                               dtype=torch.float64)
    totals = all_reduce_sum(totals, world)
    count = max(totals[3].item(), 1)
    return dict(loss=totals[0].item() / count, top1=100 * totals[1].item() / count,
                top5=100 * totals[2].item() / count, count=int(totals[3].item()))


def train_one_epoch(model, loader, optimizer, criterion, mixup, ema, cfg, device, autocast,
                    scaler, world, epoch, total_epochs, rank) -> dict:
    model.train()
    steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    loss_sum, seen, start = 0.0, 0, time.time()
    params = [p for p in model.parameters() if p.requires_grad]
    for step, (images, targets) in enumerate(loader):
        if step >= steps:
            break
        images, targets = images.to(device), torch.as_tensor(targets).to(device)
        if mixup is not None:
            images, targets = mixup(images, targets)
        optimizer.zero_grad(set_to_none=True)
        batch_loss = 0.0
        for chunk_images, chunk_targets in zip(images.chunk(cfg.accum_steps), targets.chunk(cfg.accum_steps)):
            with autocast():
                loss = criterion(model(chunk_images).float(), chunk_targets) / cfg.accum_steps
            scaler.scale(loss).backward() if scaler else loss.backward()
            batch_loss += loss.item()
        # every rank must agree on divergence before stepping
        flag = all_reduce_sum(torch.tensor([0.0 if math.isfinite(batch_loss) else 1.0]), world)
        if flag.item() > 0:
            raise TrainingDiverged(f"the loss became {batch_loss} at epoch {epoch} step {step}; "
                                   f"the last good checkpoint is kept. Lower lr or enable grad_clip")
        if scaler:
            scaler.unscale_(optimizer)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(optimizer) if scaler else optimizer.step()
        if scaler:
            scaler.update()
        if ema is not None:
            ema.update(model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model)
        loss_sum += batch_loss * len(images)
        seen += len(images)
        if rank == 0 and ((step + 1) % cfg.log_every == 0 or step + 1 == steps):
            elapsed = time.time() - start
            rate = seen * world / max(elapsed, 1e-9)
            eta = elapsed / (step + 1) * (steps - step - 1)
            print(f"epoch {epoch + 1}/{total_epochs} step {step + 1}/{steps} "
                  f"loss {batch_loss:.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                  f"{rate:.1f} img/s eta {eta:.0f}s", flush=True)
    totals = all_reduce_sum(torch.tensor([loss_sum, seen], dtype=torch.float64), world)
    return dict(train_loss=totals[0].item() / max(totals[1].item(), 1),
                lr=optimizer.param_groups[0]["lr"], seconds=time.time() - start)


# ----------------------------------------------------------------------------- bookkeeping
def machine_info() -> dict:
    return dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                scaleshift=__version__, platform=platform.platform(), processor=platform.machine(),
                cpus=os.cpu_count(), threads=torch.get_num_threads(),
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def write_logs(out: Path, history: list[dict]) -> None:
    import csv
    import io
    import json
    with atomic_path(out / "log.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in history))
    keys = sorted({k for row in history for k in row})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    with atomic_path(out / "log.csv") as tmp:
        tmp.write_text(buffer.getvalue())


def summarize(history: list[dict], protocol: str) -> dict:
    """final: last epoch; best: best test epoch (what the official code reports);
    selected: the epoch with the best validation top-1 (the clean protocol)."""
    final = history[-1]
    tested = [r for r in history if "test_top1" in r]
    best = max(tested, key=lambda r: r["test_top1"])
    out = dict(protocol=protocol,
               final=dict(epoch=final["epoch"], top1=final["test_top1"], top5=final["test_top5"]),
               best=dict(epoch=best["epoch"], top1=best["test_top1"], top5=best["test_top5"])
               if len(tested) == len(history) else None)   # None: test was not run every epoch
    if "val_top1" in final:
        selected = max(history, key=lambda r: (r["val_top1"], r["epoch"]))
        out["selected"] = dict(epoch=selected["epoch"], top1=selected["test_top1"],
                               top5=selected["test_top5"], val_top1=selected["val_top1"])
    out["reported"] = out["selected"] if protocol == "clean" else out["best"]
    return out


def config_fingerprint(cfg: RunConfig) -> dict:
    """The config keys that must match for a resume to continue the same run."""
    data = cfg.to_dict()
    for key in ("out_dir", "log_every", "workers"):
        data.pop(key)
    return data


# ----------------------------------------------------------------------------- train
def build_backbone(cfg: RunConfig, num_classes: int, drop_path: float = 0.0) -> nn.Module:
    """The run's backbone; seeded first, so a random-init backbone is the same one every time
    (its adapter's fingerprint depends on it)."""
    from .models import create_model
    seed_everything(cfg.seed)
    kwargs = dict(cfg.model_kwargs, **({"drop_path_rate": drop_path} if drop_path else {}))
    return create_model(cfg.model, num_classes=num_classes, pretrained=cfg.pretrained, **kwargs)


def load_run(run_dir: str | Path, merged: bool = False) -> tuple[RunConfig, nn.Module]:
    """A finished run's config and model (its adapter loaded; merged on request)."""
    from . import load_adapter, merge
    from .config import make_config
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ScaleshiftError(f"{run_dir} is not a run directory (no config.yaml); "
                              f"pass the out_dir of `scaleshift train`")
    cfg = make_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    model = load_adapter(build_backbone(cfg, dataset_classes(cfg)), run_dir / "adapter")
    return cfg, (merge(model) if merged else model)


def train(cfg: RunConfig, resume: bool = False) -> dict:
    wall_start = time.time()
    rank, world, device = setup_distributed(cfg.device)
    out = Path(cfg.out_dir)
    seed_everything(cfg.seed)
    autocast = autocast_for(cfg.precision, device)
    checkpoint_path = out / CHECKPOINT
    if not resume and checkpoint_path.exists():
        raise ScaleshiftError(f"{out} already holds a run; pass --resume to continue it or "
                              f"choose another out_dir")

    num_classes = dataset_classes(cfg)
    model = build_backbone(cfg, num_classes, drop_path=cfg.drop_path)
    apply(model, cfg.method, **cfg.method_options)
    model.to(device)
    train_set, val_set, test_set = build_data(cfg, model)

    per_rank = cfg.batch_size // world
    trained = model                         # what the optimizer sees: the model, or its head
    if cfg.cache_features:
        if cfg.method != "linear":
            raise ScaleshiftError("cache_features works with method=linear only (the backbone "
                                  "must stay frozen)")
        if cfg.augment != "vtab":
            raise ScaleshiftError("cache_features needs augment=vtab: cached features cannot "
                                  "be augmented")
        train_set, test_set = (cache_features(model, d, per_rank, device, autocast) for d in (train_set, test_set))
        val_set = cache_features(model, val_set, per_rank, device, autocast) if val_set else None
        trained = model.get_classifier()

    sampler = GlobalBatchSampler(len(train_set), cfg.batch_size, rank, world, cfg.seed)
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.workers)
    val_loader = eval_loader(val_set, per_rank, rank, world, cfg.workers) if val_set else None
    test_loader = eval_loader(test_set, per_rank, rank, world, cfg.workers)

    optimizer = timm.optim.create_optimizer_v2(trained, opt=cfg.opt, lr=cfg.lr,
                                               weight_decay=cfg.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=cfg.epochs, lr_min=cfg.min_lr,
                                  warmup_t=cfg.warmup_epochs, warmup_lr_init=cfg.warmup_lr)
    total_epochs = cfg.epochs + cfg.cooldown_epochs
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                      label_smoothing=cfg.label_smoothing, num_classes=num_classes)
        criterion = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    ddp = trained
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None)
    ema = ModelEmaV3(trained, decay=cfg.ema_decay) if cfg.ema_decay else None

    start_epoch, history = 0, []
    if resume:
        start_epoch, history = load_checkpoint(checkpoint_path, cfg, trained, optimizer,
                                               scheduler, ema, scaler)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        print(f"[scaleshift] {cfg.model} + {cfg.method} on {cfg.dataset}: "
              f"{trainable_parameters(model):,} trainable of {total_parameters(model):,}; "
              f"{len(train_set)} train, {len(test_set)} test, {world} process(es), "
              f"epochs {start_epoch + 1}..{total_epochs}", flush=True)

    eval_model = ema.module if ema is not None else trained
    best_val = max((r["val_top1"] for r in history), default=-1.0) if val_loader else None
    for epoch in range(start_epoch, total_epochs):
        scheduler.step(epoch)
        sampler.set_epoch(epoch)
        stats = train_one_epoch(ddp, train_loader, optimizer, criterion, mixup, ema, cfg, device,
                                autocast, scaler, world, epoch, total_epochs, rank)
        row = dict(epoch=epoch + 1, **stats)
        if val_loader is not None:
            row.update({f"val_{k}": v for k, v in evaluate(eval_model, val_loader, device, autocast, world).items()})
        if cfg.test_every_epoch or epoch + 1 == total_epochs:
            row.update({f"test_{k}": v for k, v in evaluate(eval_model, test_loader, device, autocast, world).items()})
        if not cfg.test_every_epoch and row["val_top1"] >= best_val:   # ties: the later epoch, as summarize()
            best_val = row["val_top1"]
            if rank == 0:
                with atomic_path(out / SELECTED) as tmp:
                    torch.save({k: v.detach().cpu() for k, v in adapter_state(eval_model).items()}, tmp)
        history.append(row)
        if rank == 0:
            print(f"epoch {epoch + 1}/{total_epochs} train_loss {row['train_loss']:.4f} "
                  + (f"val_top1 {row['val_top1']:.2f} " if "val_top1" in row else "")
                  + (f"test_top1 {row['test_top1']:.2f}" if "test_top1" in row else ""), flush=True)
            save_checkpoint(checkpoint_path, cfg, trained, optimizer, scheduler, ema, scaler,
                            epoch + 1, history)
            write_logs(out, history)

    if not cfg.test_every_epoch:   # test the val-selected weights once, at the end
        selected = max(history, key=lambda r: (r["val_top1"], r["epoch"]))
        if "test_top1" not in selected:
            final_state = {k: v.detach().clone() for k, v in adapter_state(eval_model).items()}
            if world > 1:
                dist.barrier()   # rank 0 has written the selected weights
            load_state_into(eval_model, torch.load(out / SELECTED, weights_only=True))
            selected.update({f"test_{k}": v for k, v in evaluate(eval_model, test_loader, device, autocast, world).items()})
            load_state_into(eval_model, final_state)
    if ema is not None:   # the reported weights are the EMA ones
        with torch.no_grad():
            for target, source in zip(trained.parameters(), ema.module.parameters()):
                target.copy_(source)
    results = dict(summarize(history, cfg.protocol), model=cfg.model, method=cfg.method,
                   dataset=cfg.dataset, method_options=model.scaleshift_config["options"],
                   trainable_params=trainable_parameters(model), total_params=total_parameters(model),
                   epochs=total_epochs, wall_time_s=round(time.time() - wall_start, 2),
                   peak_memory_mb=round(peak_memory_mb(device), 1), world_size=world,
                   machine=machine_info(), config=cfg.to_dict())
    if rank == 0:
        save_adapter(model.cpu(), out / "adapter")
        write_json(out / "results.json", results)
        print(f"[scaleshift] {cfg.protocol} top-1 {results['reported']['top1']:.2f} "
              f"(epoch {results['reported']['epoch']}); results: {out / 'results.json'}", flush=True)
    if world > 1:
        dist.barrier()
    return results


def load_state_into(model: nn.Module, state: dict) -> None:
    current = adapter_state(model)
    with torch.no_grad():
        for key, value in state.items():
            current[key].copy_(value)


def save_checkpoint(path: Path, cfg, trained, optimizer, scheduler, ema, scaler, epoch, history) -> None:
    state = dict(
        epoch=epoch, history=history, config=config_fingerprint(cfg), rng=rng_state(),
        trainable={k: v.detach().cpu() for k, v in adapter_state(trained).items()},
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
        ema=({k: v.detach().cpu() for k, v in ema.module.state_dict().items()}
             if ema is not None else None),
        scaler=scaler.state_dict() if scaler else None)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, cfg, trained, optimizer, scheduler, ema, scaler) -> tuple[int, list]:
    if not path.exists():
        raise ScaleshiftError(f"--resume: no checkpoint at {path}; start without --resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config"] != config_fingerprint(cfg):
        changed = sorted(k for k in state["config"] if state["config"][k] != config_fingerprint(cfg).get(k))
        raise ScaleshiftError(f"--resume: the config differs from the checkpoint's in {changed}; "
                              f"resume with the same recipe and overrides")
    load_state_into(trained, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None and state["ema"] is not None:
        ema.module.load_state_dict(state["ema"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return state["epoch"], state["history"]


def evaluate_run(run_dir: str | Path, merged: bool = False, split: str | None = None) -> dict:
    """Rebuild a finished run's model from its config and adapter (merged or not) and evaluate."""
    cfg, model = load_run(run_dir, merged)
    from .data import build_dataset, build_transform
    dataset = build_dataset(cfg.dataset, root=cfg.data_root, split=split or cfg.test_split,
                            transform=build_transform(cfg.augment, model, False, cfg.input_size),
                            **cfg.dataset_options)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False)
    return evaluate(model, loader, torch.device("cpu"), autocast_for(cfg.precision, torch.device("cpu")), 1)

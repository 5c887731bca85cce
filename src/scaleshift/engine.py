"""The training engine: one code path for one process and for torchrun.

    scaleshift train builtin/digits_ssf epochs=5
    torchrun --nproc_per_node=2 -m scaleshift.cli train builtin/digits_ssf

`train(cfg)` reads top to bottom as its phases: set up the process (distributed, seeds) ->
model + method -> data -> optimisation (optimizer, schedule, mixup, EMA) -> resume -> epochs of
train + evaluate + checkpoint -> finish (test the selected weights, results.json, adapter).
The state the phases share lives in one `Trainer` object. Only rank 0 writes. Checkpoints hold
the trainable parameters, norm statistics, optimizer, scheduler, EMA, RNG states and the
history; they are written atomically after every epoch, so a killed run resumes from its last
finished epoch and ends exactly as an uninterrupted one. Reading a finished run back is
runs.py's job, not this module's.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import fcntl
import io
import json
import math
import os
import random
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm.optim
import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from .adapter_files import adapter_state, foreign_files, save_adapter
from .config import RunConfig, check_train_range
from .data import build_dataset, build_transform, eval_transform_config, skipped_counts
from .errors import Interrupted, ScaleshiftError
from .extras import require
from .io import atomic_dir, atomic_path, write_json, write_text
from .methods import apply, config_of, total_parameters, trainable_parameters
from .methods.ssf import last_blocks
from .models import create_model, fetches_from_hub, identity_of
from .prefix_cache import CACHE_DIR, CacheBudget, Suffix, cache_prefix, prefix_cut
from .progress import progress, replaces_lines, say
from .profiles import check_takes_input, input_size_of
from .runs import (ADAPTER, CHECKPOINT, CONFIG, LOCK, MARKER, NAMED, RESULTS, SNAPSHOTS,
                   all_reduce_sum, autocast_for, dataset_classes, evaluate, is_run_dir, machine_info,
                   read_config, resolve_precision)


# what results.json says about time besides wall_time_s (per stage under the clean protocol)
TIMING_KEYS = ("train_seconds_per_epoch", "seconds_per_epoch", "prefix_cache")


class TrainingDiverged(ScaleshiftError):
    """The loss became NaN or infinite."""


@dataclass
class Trainer:
    """What the phases of one training run share."""
    cfg: RunConfig
    rank: int
    world: int
    device: torch.device
    autocast: Any
    out: Path
    num_classes: int = 0
    model: nn.Module | None = None      # the backbone with the method applied
    trained: nn.Module | None = None    # what the optimizer sees: the model, or its head
    ddp: nn.Module | None = None        # `trained`, wrapped for DDP under torchrun, compiled by compile=
    sets: dict = field(default_factory=dict)      # split name -> Dataset
    loaders: dict = field(default_factory=dict)   # "train" / "val" / "test" -> DataLoader
    sampler: Any = None
    optimizer: Any = None
    scheduler: Any = None
    criterion: Any = None
    mixup: Any = None
    erasing: Any = None
    scaler: Any = None
    ema: Any = None
    history: list = field(default_factory=list)
    start_epoch: int = 0
    lock: Any = None                    # the Claim: the open, locked out_dir/.lock (rank 0)
    tensorboard: Any = None             # logger=tensorboard: the SummaryWriter (rank 0)
    prefix_cache: dict | None = None    # cached-prefix training: the cut and what was cached
    cache_budget: Any = None            # its memory budget (and the files it spilled)

    @property
    def total_epochs(self) -> int:
        """Epochs of the schedule (cosine + cooldown), or where stop_epoch cuts it short."""
        total = self.cfg.epochs + self.cfg.cooldown_epochs
        return total if self.cfg.stop_epoch is None else min(total, self.cfg.stop_epoch)

    @property
    def steps_per_epoch(self) -> int:
        limit = self.cfg.max_steps_per_epoch
        steps = len(self.loaders["train"])
        return steps if limit is None else min(steps, limit)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.trained


def train(cfg: RunConfig, resume: bool = False) -> dict:
    if cfg.retrain_split:
        return train_two_stages(cfg, resume)
    wall_start = time.time()
    t = setup_process(cfg, resume)
    finished = False
    try:
        build_model(t)
        build_data(t)
        build_optimisation(t)
        if resume:
            t.start_epoch, t.history = load_checkpoint(t)
            if t.start_epoch >= t.total_epochs and (t.out / RESULTS).is_file():
                say(f"[scaleshift] {t.out} is finished; its results.json is kept as written")
                finished = True   # nothing ran, so nothing is rewritten (timings included)
                return json.loads((t.out / RESULTS).read_text())
        if t.rank == 0:
            check_adapter_folders(t.out, resume)
        t.tensorboard = open_tensorboard(t)
        announce(t)
        for epoch in range(t.start_epoch, t.total_epochs):
            run_epoch(t, epoch)
        result = finish(t, wall_start)
        finished = True
        return result
    except KeyboardInterrupt:
        raise Interrupted(f"training interrupted; {checkpoint_state(t.out)}") from None
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise ScaleshiftError(f"the disk is full (writing {exc.filename or t.out}); nothing was "
                              f"half-written: {checkpoint_state(t.out)} after freeing space") from None
    finally:
        if t.cache_budget is not None:
            t.cache_budget.remove_files()
        if t.tensorboard is not None:
            t.tensorboard.close()
        if t.lock is not None:
            if not (t.out / CHECKPOINT).exists():
                t.lock.undo()   # ended before its first checkpoint: leave no trace
            elif not finished and t.lock.made_lock:
                (t.out / LOCK).unlink(missing_ok=True)   # a refused or failed resume: as it was
            t.lock.close()   # closing the file releases the lock


def checkpoint_state(out: Path) -> str:
    """Where an interrupted run stands: its last complete checkpoint and how to continue."""
    path = out / CHECKPOINT
    if not path.is_file():
        return "it ended before its first checkpoint, so there is nothing to resume: run the command again"
    try:
        epoch = torch.load(path, map_location="cpu", weights_only=True)["epoch"]
    except Exception:   # unreadable: say where it is without its epoch
        epoch = "?"
    return (f"the last complete checkpoint is {path} (epoch {epoch}); continue with the same "
            f"command plus --resume")


def train_two_stages(cfg: RunConfig, resume: bool) -> dict:
    """The clean protocol in full (VTAB-1k): stage 1 trains on train_split and selects the
    epoch on val_split, without testing; stage 2 retrains from scratch on retrain_split with
    the same schedule up to the selected epoch and tests once. out_dir holds both stages
    (select/, retrain/), the reported adapter and one results.json."""
    out, rank = Path(cfg.out_dir), int(os.environ.get("RANK", "0"))
    claim = claim_out_dir(out, rank, refuse=() if resume else (RESULTS,))
    try:
        if resume and (out / RESULTS).is_file() and (out / CONFIG).is_file():
            changed = config_changes(config_fingerprint(read_config(out)), config_fingerprint(cfg))
            if changed:
                raise ScaleshiftError(f"--resume: the config differs from the one {out} was "
                                      f"trained with in {changed}; resume with the same recipe "
                                      f"and overrides")
            say(f"[scaleshift] {out} is finished; its results.json is kept as written")
            return json.loads((out / RESULTS).read_text())
        if rank == 0:
            check_adapter_folders(out, resume)
        stages = {}
        select = dataclasses.replace(cfg, retrain_split=None, test_split=None,
                                     out_dir=str(out / "select"))
        stages["select"] = run_stage(select, resume)
        epochs = stages["select"]["selected"]["epoch"]
        retrain = dataclasses.replace(cfg, train_split=cfg.retrain_split, val_split=None,
                                      retrain_split=None, protocol="official", stop_epoch=epochs,
                                      test_every_epoch=False, out_dir=str(out / "retrain"))
        stages["retrain"] = run_stage(retrain, resume)
    except KeyboardInterrupt:
        raise Interrupted(f"training interrupted; {checkpoint_state(out / 'retrain')}"
                          if (out / "retrain" / CHECKPOINT).is_file() else
                          f"training interrupted; {checkpoint_state(out / 'select')}") from None
    finally:
        if claim is not None:
            if not any((out / stage / CHECKPOINT).exists() for stage in ("select", "retrain")):
                claim.undo()
            claim.close()
    final = stages["retrain"]["final"]
    results = dict(stages["retrain"], protocol="clean", stages={
        "select": dict(train_split=cfg.train_split, val_split=cfg.val_split,
                       selected=stages["select"]["selected"], run="select",
                       **{k: stages["select"].get(k) for k in TIMING_KEYS}),
        "retrain": dict(train_split=cfg.retrain_split, epochs=epochs, run="retrain",
                        **{k: stages["retrain"].get(k) for k in TIMING_KEYS})},
        selected=dict(final, val_top1=stages["select"]["selected"]["val_top1"]),
        reported=dict(final, weights=ADAPTER), weights={"reported": ADAPTER},
        config=cfg.to_dict())
    if rank == 0:
        copy_dir(out / "retrain" / ADAPTER, out / ADAPTER)
        write_text(out / CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        write_json(out / RESULTS, results)
        say(f"[scaleshift] clean top-1 {final['top1']:.2f} (retrained on {cfg.retrain_split} for "
            f"the {epochs} epochs selected on {cfg.val_split}); results: {out / RESULTS}")
    return results


def run_stage(cfg: RunConfig, resume: bool) -> dict:
    out = Path(cfg.out_dir)
    if (out / CONFIG).is_file():   # a stage trained before: only the same config continues it
        changed = config_changes(config_fingerprint(read_config(out)), config_fingerprint(cfg))
        if changed:
            raise ScaleshiftError(f"--resume: the config differs from the one {out} was trained "
                                  f"with in {changed}; resume with the same recipe and overrides")
    if (out / RESULTS).is_file():
        return json.loads((out / RESULTS).read_text())
    return train(cfg, resume=resume and (out / CHECKPOINT).is_file())


def check_adapter_folders(out: Path, resume: bool) -> None:
    """The adapter folders a finished run replaces (out/adapter, out/adapters/NAME) hold only
    an adapter scaleshift wrote: a file of the user's there is found before any training, not
    after the last epoch, and is never removed."""
    named = sorted(p for p in (out / NAMED).iterdir()) if (out / NAMED).is_dir() else []
    for folder in (out / ADAPTER, *named):
        if folder.exists() and not folder.is_dir():
            foreign = [folder.name]
            folder = folder.parent
        else:
            foreign = foreign_files(folder)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ScaleshiftError(f"{folder} holds {shown}, which scaleshift did not write, and the "
                                  f"run writes its adapter there when it finishes: move "
                                  f"{'them' if len(foreign) > 1 else 'it'} elsewhere, then run the "
                                  f"same command again{' (with --resume)' if resume else ''}; "
                                  f"nothing was trained or removed")


def copy_dir(source: Path, target: Path) -> None:
    with atomic_dir(target) as tmp:
        for item in source.iterdir():
            shutil.copy2(item, tmp / item.name)


# ----------------------------------------------------------------------------- phases
def setup_process(cfg: RunConfig, resume: bool) -> Trainer:
    """(rank, world size, device) from torchrun's WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ScaleshiftError("device=cuda but no CUDA device is available; use device=cpu")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    seed_everything(cfg.seed)
    if cfg.logger == "tensorboard":
        require("tensorboard", "logger=tensorboard")   # missing: say so before any work
    out = Path(cfg.out_dir)
    t = Trainer(cfg, rank, world, device, autocast_for(cfg.precision, device), out)
    t.lock = claim_out_dir(out, rank, refuse=() if resume else (CHECKPOINT, RESULTS))
    return t


class Claim:
    """The open, locked out_dir/.lock of a training, and what claiming the folder created, so
    that a training refused before its first checkpoint can remove exactly that."""

    def __init__(self, out: Path, lock, fresh: bool, made: list[Path], made_lock: bool):
        self.out, self.lock, self.fresh, self.made, self.made_lock = out, lock, fresh, made, made_lock

    def close(self) -> None:
        self.lock.close()

    def undo(self) -> None:
        """Remove what this training wrote before its first checkpoint, by name (a file
        someone else put into the folder meanwhile stays), then the folders it made, if empty."""
        from .prefix_cache import CACHE_DIR
        if not self.fresh:
            return
        for name in (CONFIG, SNAPSHOTS, "tensorboard", CACHE_DIR, "select", "retrain", MARKER, LOCK):
            path = self.out / name
            if path.is_dir() and not path.is_symlink():
                if name in ("select", "retrain"):   # a stage's own claim removed its files
                    with contextlib.suppress(OSError):
                        path.rmdir()
                else:
                    shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for folder in self.made:   # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


def claim_out_dir(out: Path, rank: int, refuse: tuple[str, ...] = ()) -> Claim | None:
    """Refuse a non-empty folder that is not a scaleshift run (nothing in it is touched) and a
    run that already holds one of the files in `refuse` (a run to --resume), then create the
    run directory and lock it for this process: a second training into it is refused at once
    with the PID that holds it; a killed process's lock is released by the kernel, so the next
    run takes it over. Returns the Claim (the open lock file). Only rank 0 checks and writes:
    another rank checking while rank 0 creates the folder could see it half-made and refuse it;
    a refusal on rank 0 ends the whole torchrun job."""
    if rank != 0:
        return None
    if out.exists() and not out.is_dir():
        raise ScaleshiftError(f"out_dir {out} is a file; choose a directory")
    if out.is_dir() and any(out.iterdir()) and not is_run_dir(out):
        raise ScaleshiftError(f"out_dir {out} is a non-empty folder that is not a scaleshift run; "
                              f"nothing in it was touched. Choose a new or empty out_dir")
    if any((out / name).exists() for name in refuse):
        raise ScaleshiftError(f"{out} already holds a run; pass --resume to continue it or "
                              f"choose another out_dir")
    fresh = not out.is_dir() or not any(out.iterdir())
    made = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).touch()   # first, so a folder scaleshift made is always known as a run
        made_lock = not (out / LOCK).exists()
        lock = open(out / LOCK, "a+")
    except OSError as exc:
        for folder in made:
            with contextlib.suppress(OSError):
                (folder / MARKER).unlink(missing_ok=True)
                folder.rmdir()
        raise ScaleshiftError(f"cannot create the run folder {out}: {exc.strerror or exc}"
                              f"{f' ({exc.filename})' if exc.filename else ''}; choose a writable "
                              f"out_dir") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ScaleshiftError(f"{out} is locked by PID {holder}, which is training into it; wait "
                              f"for it to finish or choose another out_dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return Claim(out, lock, fresh, made, made_lock)


def build_model(t: Trainer) -> None:
    t.num_classes = dataset_classes(t.cfg)
    t.model = t.trained = model_for(t.cfg, t.num_classes, t.device)


def model_for(cfg: RunConfig, num_classes: int, device) -> nn.Module:
    """The backbone (seeded first, so a random-init backbone is the same one every time) with
    the method applied, on `device`, checked to take the config's input_size."""
    seed_everything(cfg.seed)
    # a drop_path the config sets reaches the model as written, 0 included (Swin's own default is 0.1)
    kwargs = dict(cfg.model_kwargs, **({} if cfg.drop_path is None else {"drop_path_rate": cfg.drop_path}))
    model = create_model(cfg.model, num_classes=num_classes, pretrained=cfg.pretrained,
                         seed=cfg.seed, **kwargs)
    apply(model, cfg.method, **cfg.method_options)
    model.to(device)
    if cfg.input_size is not None:
        size = cfg.input_size
        vit = getattr(getattr(model, "patch_embed", None), "img_size", None) is not None
        check_takes_input(model, torch.zeros(1, input_size_of(model)[0], size, size, device=device),
                          f"input_size={size}", f"a ViT is built for one input size, so pass "
                          f"model_kwargs.img_size={size} as well" if vit else "give a larger "
                          "input_size, or leave it out for the backbone's own")
    return model


def check_model(cfg: RunConfig) -> str:
    """What `train --validate-only` checks by building the model (on the CPU) as training
    would: the weights file fits the architecture, the model takes input_size, and
    cache_prefix=true can be honoured. Weights on the Hub are not fetched for a check: such a
    backbone is built from random init (an hf-hub: name, whose architecture is on the Hub too,
    is not built). Returns what was checked, for the user."""
    if fetches_from_hub(cfg.model, cfg.pretrained):
        if cfg.model.startswith("hf-hub:"):
            return "the model is on the Hub and was not built"
        cfg = dataclasses.replace(cfg, pretrained=False)
        checked = "the model builds (its Hub weights were not fetched)"
    elif cfg.pretrained is False:
        checked = "the model builds (random init)"
    else:
        checked = "the model builds from its weights"
    model = model_for(cfg, dataset_classes(cfg), torch.device("cpu"))
    if cfg.cache_prefix:
        plan_prefix_cache(cfg, model)
    return checked


def build_data(t: Trainer) -> None:
    """Datasets and loaders; with cache_features the backbone's features replace the images
    and only the head trains."""
    cfg = t.cfg
    train_set, val_set, test_set = load_splits(cfg, t.model)
    t.sets = dict(train=train_set, val=val_set, test=test_set)   # the image datasets
    per_rank = cfg.batch_size // t.world
    if cfg.cache_features:
        if cfg.method != "linear":
            raise ScaleshiftError("cache_features works with method=linear only (the backbone "
                                  "must stay frozen)")
        if cfg.augment != "vtab":
            raise ScaleshiftError("cache_features needs augment=vtab: cached features cannot "
                                  "be augmented")
        train_set, val_set, test_set = (cache_features(t.model, d, per_rank, t.device, t.autocast)
                                        if d is not None else None
                                        for d in (train_set, val_set, test_set))
        classifier = t.model.get_classifier()
        outside = {n for n, p in t.model.named_parameters() if p.requires_grad} - \
            {n for n, p in t.model.named_parameters() if any(p is q for q in classifier.parameters())}
        if outside:
            raise ScaleshiftError(f"cache_features trains the classifier on fixed features, but this "
                                  f"linear probe also trains {sorted(outside)[0]} (the official probe "
                                  f"trains the whole head); set method_options.whole_head=false")
        t.trained = classifier
    cut = plan_prefix_cache(cfg, t.model)
    if cut is not None:
        train_set, val_set, test_set = cache_prefix_splits(t, cut, dict(
            train=train_set, val=val_set, test=test_set), per_rank)
    t.sampler = GlobalBatchSampler(len(train_set), cfg.batch_size, t.rank, t.world, cfg.seed)
    t.loaders = dict(train=DataLoader(train_set, batch_sampler=t.sampler, num_workers=cfg.workers),
                     val=eval_loader(val_set, per_rank, t.rank, t.world, cfg.workers) if val_set else None,
                     test=eval_loader(test_set, per_rank, t.rank, t.world, cfg.workers) if test_set is not None else None)


def plan_prefix_cache(cfg: RunConfig, model: nn.Module) -> int | None:
    """The block the cached prefix ends at, or None to train on images. cache_prefix=null
    caches SSF with layers=last:k when that is exact and says why when it is not;
    cache_prefix=true caches any method whose trainable tensors all sit after a cut, or
    refuses with the reason."""
    if cfg.cache_prefix is False:
        return None
    if cfg.cache_prefix is None and not (
            cfg.method == "ssf" and last_blocks(config_of(model)["options"]["layers"])):
        return None
    random = [f"{key}={getattr(cfg, key)}" for key in ("mixup", "cutmix", "random_erasing")
              if getattr(cfg, key)]
    try:
        if cfg.augment != "vtab" or random:   # cache_prefix=true: refused in RunConfig.validate
            raise ScaleshiftError(f"{', '.join(random) or f'augment={cfg.augment}'} changes the "
                                  f"training images every epoch")
        return prefix_cut(model)
    except ScaleshiftError as exc:
        if cfg.cache_prefix:
            raise
        say(f"[scaleshift] training on images, the prefix is not cached: {exc}")
        return None


def cache_prefix_splits(t: Trainer, cut: int, splits: dict, batch: int) -> list:
    """Every split through the frozen prefix once; `t.trained` becomes the suffix."""
    started = time.time()
    t.cache_budget = CacheBudget(t.cfg.cache_prefix_mb, t.out / CACHE_DIR, t.rank)
    cached, info = [], {}
    for name, dataset in splits.items():
        if dataset is None:
            cached.append(None)
            continue
        data, info[name] = cache_prefix(t.model, dataset, cut, batch, t.device, t.autocast,
                                        t.cache_budget, name, t.cfg.workers)
        cached.append(data)
    t.trained = Suffix(t.model, cut)
    t.prefix_cache = dict(cut=cut, blocks=len(t.model.blocks), cached_blocks=cut,
                          trained_blocks=len(t.model.blocks) - cut, splits=info,
                          seconds=round(time.time() - started, 2))
    return cached


def build_optimisation(t: Trainer) -> None:
    """timm's AdamW (no weight decay on 1-D parameters), cosine schedule with warmup (per
    epoch, or per update with sched_on_updates), Mixup/CutMix or label smoothing, AMP scaler,
    DDP and EMA."""
    cfg = t.cfg
    t.optimizer = timm.optim.create_optimizer_v2(t.trained, opt=cfg.opt, lr=cfg.lr,
                                                 weight_decay=cfg.weight_decay)
    # timm's own switch: counted in optimizer updates, the scheduler ignores step(epoch) and
    # follows step_update(n); counted in epochs, the reverse. The loop calls both.
    per_epoch = t.steps_per_epoch if cfg.sched_on_updates else 1
    t.scheduler = CosineLRScheduler(t.optimizer, t_initial=cfg.epochs * per_epoch, lr_min=cfg.min_lr,
                                    warmup_t=cfg.warmup_epochs * per_epoch,
                                    warmup_lr_init=cfg.warmup_lr,
                                    t_in_epochs=not cfg.sched_on_updates)
    if cfg.mixup > 0 or cfg.cutmix > 0:
        t.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                        label_smoothing=cfg.label_smoothing, num_classes=t.num_classes)
        t.criterion = SoftTargetCrossEntropy()
    else:
        t.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if cfg.random_erasing > 0:   # on the normalised batch after mixup, per image (official)
        t.erasing = RandomErasing(cfg.random_erasing, mode="pixel", max_count=1, device=t.device.type)
    t.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    t.ddp = t.trained
    if t.world > 1:
        t.ddp = nn.parallel.DistributedDataParallel(
            t.trained, device_ids=[t.device.index] if t.device.type == "cuda" else None)
    if cfg.compile != "none":   # a wrapper sharing the parameters: saving, eval and merge see the model
        t.ddp = torch.compile(t.ddp, backend=cfg.compile)
    t.ema = ModelEmaV3(t.trained, decay=cfg.ema_decay) if cfg.ema_decay else None


def announce(t: Trainer) -> None:
    if t.rank != 0:
        return
    t.out.mkdir(parents=True, exist_ok=True)
    write_text(t.out / CONFIG, yaml.safe_dump(t.cfg.to_dict(), sort_keys=False))
    tested = f"{len(t.sets['test'])} test" if t.sets["test"] is not None else "no test"
    say(f"[scaleshift] {t.cfg.model} + {t.cfg.method} on {t.cfg.dataset}: "
        f"{trainable_parameters(t.model):,} trainable of {total_parameters(t.model):,}; "
        f"{len(t.sets['train'])} train, {tested}, {t.world} process(es), "
        f"epochs {t.start_epoch + 1}..{t.total_epochs}")
    if t.cfg.warmup_epochs >= t.cfg.epochs:
        say(f"[scaleshift] note: warmup_epochs={t.cfg.warmup_epochs} >= epochs={t.cfg.epochs}: the "
            f"learning rate never reaches lr={t.cfg.lr:g}; lower warmup_epochs for a short run")
    if t.cfg.precision == "auto":
        used = resolve_precision("auto", t.device)
        device = "this GPU" if t.device.type == "cuda" else "this CPU"
        say(f"[scaleshift] precision=auto: " + (f"bf16 autocast ({device} has bf16 units)" if used == "bf16"
            else f"fp32 ({device} has no bf16 units, and emulated bf16 is slower than fp32)"))
    if t.prefix_cache is not None:
        c = t.prefix_cache
        say(f"[scaleshift] prefix cached: blocks 0-{c['cut'] - 1} ran once per sample "
            f"({c['seconds']:.1f}s), each epoch trains blocks {c['cut']}-{c['blocks'] - 1}, norm, head")


def run_epoch(t: Trainer, epoch: int) -> None:
    """Train one epoch, evaluate (val every epoch; test every epoch or only the last), keep the
    val-selected weights when test runs once, checkpoint."""
    cfg = t.cfg
    t.scheduler.step(epoch)
    t.sampler.set_epoch(epoch)
    started = time.time()
    row = dict(epoch=epoch + 1, **train_one_epoch(t, epoch))
    if t.loaders["val"] is not None:
        row.update(prefixed("val", evaluate(t.eval_model, t.loaders["val"], t.device, t.autocast,
                                            t.world, desc="val")))
    if t.loaders["test"] is not None and (cfg.test_every_epoch or epoch + 1 == t.total_epochs):
        row.update(prefixed("test", evaluate(t.eval_model, t.loaders["test"], t.device, t.autocast,
                                             t.world, desc="test")))
    row["epoch_seconds"] = time.time() - started   # training + this epoch's evaluation
    # keep the weights of the epochs summarize() will pick: selected (best val, ties -> the
    # later epoch) and best (best test when tested every epoch, ties -> the earlier epoch)
    if "val_top1" in row and row["val_top1"] >= max((r["val_top1"] for r in t.history), default=-1.0):
        save_snapshot(t, "selected")
    if cfg.test_every_epoch and "test_top1" in row \
            and row["test_top1"] > max((r["test_top1"] for r in t.history), default=-1.0):
        save_snapshot(t, "best")
    t.history.append(row)
    if t.rank == 0:
        say(f"epoch {epoch + 1}/{t.total_epochs} train_loss {row['train_loss']:.4f} "
            + (f"val_top1 {row['val_top1']:.2f} " if "val_top1" in row else "")
            + (f"test_top1 {row['test_top1']:.2f} " if "test_top1" in row else "")
            + f"{row['epoch_seconds']:.1f}s")
        save_checkpoint(t, epoch + 1)
        write_logs(t.out, t.history)
        if t.tensorboard is not None:
            log_epoch(t.tensorboard, row, row["epoch"] * t.steps_per_epoch)


def train_one_epoch(t: Trainer, epoch: int) -> dict:
    cfg, model = t.cfg, t.ddp
    model.train()
    if cfg.batchnorm == "frozen":
        freeze_batchnorm_statistics(model)
    steps = t.steps_per_epoch
    loss_sum, seen, start = 0.0, 0, time.time()
    params = [p for p in model.parameters() if p.requires_grad]
    bar = progress(t.loaders["train"], f"epoch {epoch + 1}/{t.total_epochs}", total=steps)
    for step, (images, targets) in enumerate(bar):
        if step >= steps:
            break
        images, targets = images.to(t.device), torch.as_tensor(targets).to(t.device)
        if t.mixup is not None:
            images, targets = t.mixup(images, targets)
        if t.erasing is not None:
            images = t.erasing(images)
        batch_loss = forward_backward(t, model, images, targets)
        if not all_finite(batch_loss, t.world):   # every rank must agree before stepping
            raise TrainingDiverged(divergence_message(t, batch_loss, epoch, step))
        optimizer_step(t, params)
        t.scheduler.step_update(epoch * steps + step + 1)
        loss_sum += batch_loss * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{batch_loss:.4f}", lr=f"{t.optimizer.param_groups[0]['lr']:.2e}",
                        refresh=False)
        if t.tensorboard is not None:
            t.tensorboard.add_scalar("train/step_loss", batch_loss, epoch * steps + step + 1)
        # in a terminal the bar shows the same; in a log file (no bar) these lines stay
        if t.rank == 0 and not replaces_lines(bar) and ((step + 1) % cfg.log_every == 0
                                                        or step + 1 == steps):
            elapsed = time.time() - start
            print(f"epoch {epoch + 1}/{t.total_epochs} step {step + 1}/{steps} "
                  f"loss {batch_loss:.4f} lr {t.optimizer.param_groups[0]['lr']:.2e} "
                  f"{seen * t.world / max(elapsed, 1e-9):.1f} img/s "
                  f"eta {elapsed / (step + 1) * (steps - step - 1):.0f}s", flush=True)
    bar.close()
    totals = all_reduce_sum(torch.tensor([loss_sum, seen], dtype=torch.float64), t.world)
    return dict(train_loss=totals[0].item() / max(totals[1].item(), 1),
                lr=t.optimizer.param_groups[0]["lr"], seconds=time.time() - start)


def forward_backward(t: Trainer, model: nn.Module, images, targets) -> float:
    """Forward + backward over `accum_steps` chunks of one global batch; the summed loss."""
    cfg = t.cfg
    t.optimizer.zero_grad(set_to_none=True)
    batch_loss = 0.0
    chunks = list(zip(images.chunk(cfg.accum_steps), targets.chunk(cfg.accum_steps)))
    for index, (chunk_images, chunk_targets) in enumerate(chunks):
        # under DDP gradients are all-reduced once, on the last micro-step
        sync = index == len(chunks) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with t.autocast():
                loss = t.criterion(model(chunk_images).float(), chunk_targets) / cfg.accum_steps
            t.scaler.scale(loss).backward() if t.scaler else loss.backward()
        batch_loss += loss.item()
    return batch_loss


def optimizer_step(t: Trainer, params: list) -> None:
    """Unscale, clip, step, update the scaler and the EMA."""
    cfg = t.cfg
    if t.scaler:
        t.scaler.unscale_(t.optimizer)
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    t.scaler.step(t.optimizer) if t.scaler else t.optimizer.step()
    if t.scaler:
        t.scaler.update()
    if t.ema is not None:
        t.ema.update(t.trained)


def all_finite(loss: float, world: int) -> bool:
    flag = all_reduce_sum(torch.tensor([0.0 if math.isfinite(loss) else 1.0]), world)
    return flag.item() == 0


def divergence_message(t: Trainer, loss: float, epoch: int, step: int) -> str:
    kept = (f"the checkpoint of epoch {len(t.history)} in {t.out / CHECKPOINT} is kept"
            if t.history else "no epoch finished, so there is no checkpoint to resume from")
    return (f"the loss became {loss} at epoch {epoch + 1} step {step + 1}; {kept}. "
            f"Lower lr or enable grad_clip")


def finish(t: Trainer, wall_start: float) -> dict:
    """Test the val-selected weights once (when test did not run every epoch), then save the
    weights behind every number: adapter/ holds the reported ones, adapters/<name> the others
    (final, selected, best, and final_without_ema under EMA); results.json says which is which."""
    cfg, model = t.cfg, t.model
    final = detached(adapter_state(t.eval_model))           # what the final numbers came from
    online = detached(adapter_state(t.trained)) if t.ema is not None else None
    if t.world > 1:
        dist.barrier()   # rank 0 has written the snapshots
    selected = max(t.history, key=lambda r: (r["val_top1"], r["epoch"])) if t.loaders["val"] else None
    if selected is not None and t.loaders["test"] is not None and "test_top1" not in selected:
        load_state_into(t.eval_model, load_snapshot(t, "selected"))
        selected.update(prefixed("test", evaluate(t.eval_model, t.loaders["test"], t.device,
                                                  t.autocast, t.world, desc="test (selected)")))
    summary = summarize(t.history, cfg.protocol, cfg.test_every_epoch)
    states = {"final": final, "final_without_ema": online}
    for name in ("selected", "best"):
        if summary.get(name) is not None:
            states[name] = load_snapshot(t, name)
    reported = summary["reported_weights"]
    weights = {name: ADAPTER if name == reported else f"{NAMED}/{name}"
               for name, state in states.items() if state is not None}
    weights["reported"] = ADAPTER
    for name in ("final", "best", "selected"):
        if summary.get(name) is not None:
            summary[name]["weights"] = weights[name]
    skipped = skipped_counts(t.sets, t.world, t.device)   # every rank: merged across them
    results = dict(summary, weights=weights, skipped_images=skipped, model=cfg.model, method=cfg.method,
                   dataset=cfg.dataset, method_options=config_of(model)["options"],
                   model_identity=identity.as_dict() if (identity := identity_of(model)) else None,
                   trainable_params=trainable_parameters(model), total_params=total_parameters(model),
                   epochs=t.total_epochs, wall_time_s=round(time.time() - wall_start, 2),
                   **epoch_times(t.history), prefix_cache=t.prefix_cache,
                   peak_memory_mb=round(peak_memory_mb(t.device), 1), world_size=t.world,
                   precision=resolve_precision(cfg.precision, t.device),
                   machine=machine_info(), config=cfg.to_dict())
    if t.rank == 0:
        model.cpu()
        # what predict and eval rebuild the run's serving from
        served = dict(class_names=class_names_of(t.sets["train"], model.num_classes),
                      eval_transform=eval_transform_config(cfg.augment, model, cfg.input_size))
        for name, state in states.items():
            if state is not None:
                load_state_into(t.trained, state)
                save_adapter(model, t.out / weights[name], **served)
        write_json(t.out / RESULTS, results)
        reported = results["reported"]
        shown = (f"top-1 {reported['top1']:.2f}" if "top1" in reported
                 else f"val top-1 {reported['val_top1']:.2f}" if "val_top1" in reported
                 else "trained, nothing evaluated (no val or test split)")
        say(f"[scaleshift] {cfg.protocol} {shown} (epoch {reported['epoch']}); results: {t.out / RESULTS}")
    if t.world > 1:
        dist.barrier()
    return results


def epoch_times(history: list[dict]) -> dict:
    """Median seconds per epoch: training only, and training + evaluation (the epoch's wall
    time; one-off costs such as the prefix cache are not in it)."""
    def median(key):
        values = [row[key] for row in history if key in row]
        return round(float(np.median(values)), 3) if values else None
    return dict(train_seconds_per_epoch=median("seconds"), seconds_per_epoch=median("epoch_seconds"))


def class_names_of(dataset: Dataset, num_classes: int) -> list[str] | None:
    """The class names of a dataset (through a Subset), None when it has no name per class."""
    names = getattr(getattr(dataset, "dataset", dataset), "classes", None)
    return [str(n) for n in names] if names and len(names) == num_classes else None


def save_snapshot(t: Trainer, name: str) -> None:
    if t.rank == 0:
        with atomic_path(t.out / SNAPSHOTS / f"{name}.pt") as tmp, open(tmp, "wb") as f:
            torch.save(detached(adapter_state(t.eval_model)), f)


def load_snapshot(t: Trainer, name: str) -> dict:
    from .records import load_tensors
    return load_tensors(t.out / SNAPSHOTS / f"{name}.pt", "snapshot",
                        "the run folder was damaged; train it again")


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


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """BatchNorm layers normalise with their (pretrained) running statistics and leave them
    unchanged, as in eval mode, while the rest of the model trains; their affine weights still
    train if the method trains them."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def load_splits(cfg: RunConfig, model: nn.Module) -> tuple[Dataset, Dataset | None, Dataset]:
    train_tf = build_transform(cfg.augment, model, is_training=True, input_size=cfg.input_size)
    eval_tf = build_transform(cfg.augment, model, is_training=False, input_size=cfg.input_size)

    def load(split, tf):
        return build_dataset(cfg.dataset, root=cfg.data_root, split=split, transform=tf,
                             **cfg.dataset_options)
    val = load(cfg.val_split, eval_tf) if cfg.val_split else None
    train_set = load(cfg.train_split, train_tf)
    if cfg.train_offset or cfg.train_limit is not None:
        train_set = torch.utils.data.Subset(train_set, check_train_range(cfg, len(train_set)))
    test = load(cfg.test_split, eval_tf) if cfg.test_split else None
    if test is not None and cfg.test_limit is not None and cfg.test_limit < len(test):
        test = torch.utils.data.Subset(test, range(cfg.test_limit))
    return train_set, val, test


def eval_loader(dataset: Dataset, batch: int, rank: int, world: int, workers: int) -> DataLoader:
    shard = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
    return DataLoader(shard, batch_size=batch, shuffle=False, num_workers=workers)


@torch.no_grad()
def cache_features(model: nn.Module, dataset: Dataset, batch: int, device, autocast) -> TensorDataset:
    """Backbone features (pre-logits) of every sample, once, for linear probing on a cache."""
    model.eval()
    feats, labels = [], []
    for images, targets in progress(DataLoader(dataset, batch_size=batch, shuffle=False),
                                    "caching features"):
        with autocast():
            feats.append(model.forward_head(model.forward_features(images.to(device)),
                                            pre_logits=True).float().cpu())
        labels.append(torch.as_tensor(targets))
    return TensorDataset(torch.cat(feats), torch.cat(labels))


# ----------------------------------------------------------------------------- bookkeeping
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(), python=list(random.getstate()[1]),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
                numpy_keys=torch.from_numpy(np_state[1].astype(np.int64)),
                numpy_pos=int(np_state[2]), numpy_gauss=[int(np_state[3]), float(np_state[4])])


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32),
                         state["numpy_pos"], state["numpy_gauss"][0], state["numpy_gauss"][1]))


def prefixed(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def detached(state: dict) -> dict:
    return {k: v.detach().cpu() for k, v in state.items()}


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


def open_tensorboard(t: Trainer):
    """logger=tensorboard (rank 0): a SummaryWriter under out_dir/tensorboard/, beside
    log.jsonl; every scalar at the global step (optimizer steps so far). Each start adds a new
    event file, and purges (hides) what an interrupted run logged after the checkpoint this one
    starts from, so a resumed run's curves hold every step once."""
    if t.cfg.logger != "tensorboard" or t.rank != 0:
        return None
    from torch.utils.tensorboard import SummaryWriter   # its package: checked in setup_process
    from torch.utils.tensorboard.summary import hparams
    writer = SummaryWriter(str(t.out / "tensorboard"), purge_step=t.start_epoch * t.steps_per_epoch + 1)
    # the HPARAMS tab: every config key (a mapping or null as its JSON), and as metrics the
    # scalars log_epoch writes under those tags
    values = {key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
              for key, value in t.cfg.to_dict().items()}
    values["trainable_params"] = trainable_parameters(t.model)
    for summary in hparams(values, dict.fromkeys(HPARAM_METRICS, 0.0)):
        writer.file_writer.add_summary(summary)
    return writer


HPARAM_METRICS = ("val/top1", "test/top1", "train/loss")


def log_epoch(writer, row: dict, step: int) -> None:
    """One row of log.jsonl as scalars: train_loss -> train/loss, val_top1 -> val/top1, lr, ..."""
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)):
            writer.add_scalar(key.replace("_", "/", 1), value, step)
    writer.flush()   # on disk with the checkpoint of the same epoch


def write_logs(out: Path, history: list[dict]) -> None:
    write_text(out / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=sorted({k for row in history for k in row}))
    writer.writeheader()
    writer.writerows(history)
    write_text(out / "log.csv", buffer.getvalue())


def summarize(history: list[dict], protocol: str, tested_every_epoch: bool = True) -> dict:
    """final: last epoch; best: best test epoch (what the official code reports; only when
    test ran every epoch); selected: the epoch with the best validation top-1 (the clean
    protocol). `reported_weights` names the one the protocol reports (a single test at the
    end: the final one)."""
    def entry(row):
        return {"epoch": row["epoch"], **({"top1": row["test_top1"], "top5": row["test_top5"]}
                                          if "test_top1" in row else {})}
    final = history[-1]
    tested = [r for r in history if "test_top1" in r]
    out = dict(protocol=protocol, final=entry(final),
               best=entry(max(tested, key=lambda r: r["test_top1"]))
               if tested_every_epoch and tested and len(tested) == len(history) else None)
    if "val_top1" in final:
        selected = max(history, key=lambda r: (r["val_top1"], r["epoch"]))
        out["selected"] = dict(entry(selected), val_top1=selected["val_top1"])
    if protocol == "clean":
        out["reported_weights"] = "selected"
    else:
        out["reported_weights"] = "best" if out["best"] is not None else "final"
    out["reported"] = out[out["reported_weights"]]
    return out


def config_fingerprint(cfg: RunConfig) -> dict:
    """The config keys that must match for a resume to continue the same run."""
    data = cfg.to_dict()
    for key in ("out_dir", "log_every", "workers", "logger", "compile"):
        data.pop(key)
    return data


def config_changes(saved: dict, expected: dict) -> list[str]:
    """Keys whose values differ. A key the checkpoint lacks (added by a later scaleshift) is
    unchanged when it holds its default: that default is what the version that wrote it did."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(RunConfig)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    return sorted(k for k in {*saved, *expected}
                  if saved.get(k, defaults.get(k)) != expected.get(k, defaults.get(k)))


def load_state_into(model: nn.Module, state: dict) -> None:
    current = adapter_state(model)
    with torch.no_grad():
        for key, value in state.items():
            current[key].copy_(value)


def save_checkpoint(t: Trainer, epoch: int) -> None:
    state = dict(
        epoch=epoch, history=t.history, config=config_fingerprint(t.cfg), rng=rng_state(),
        trainable=detached(adapter_state(t.trained)),
        optimizer=t.optimizer.state_dict(), scheduler=t.scheduler.state_dict(),
        ema=detached(t.ema.module.state_dict()) if t.ema is not None else None,
        scaler=t.scaler.state_dict() if t.scaler else None)
    # through a file object: a full disk then raises OSError(ENOSPC) rather than torch's
    # RuntimeError, and atomic_path removes the partial file (the previous checkpoint stays)
    with atomic_path(t.out / CHECKPOINT) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def load_checkpoint(t: Trainer) -> tuple[int, list]:
    path = t.out / CHECKPOINT
    if not path.exists():
        raise ScaleshiftError(f"--resume: no checkpoint at {path}; start without --resume")
    from .records import load_tensors
    fix = "start the run again without --resume, in a new out_dir"
    state = load_tensors(path, "--resume: checkpoint", fix)
    keys = ("epoch", "history", "config", "rng", "trainable", "optimizer", "scheduler", "ema", "scaler")
    if not isinstance(state, dict) or any(k not in state for k in keys) \
            or not isinstance(state["config"], dict):
        raise ScaleshiftError(f"--resume: {path} is not a scaleshift training checkpoint (it lacks "
                              f"{[k for k in keys if k not in state] if isinstance(state, dict) else keys}); {fix}")
    expected = config_fingerprint(t.cfg)
    changed = config_changes(state["config"], expected)
    if changed:
        raise ScaleshiftError(f"--resume: the config differs from the checkpoint's in {changed}; "
                              f"resume with the same recipe and overrides")
    try:
        load_state_into(t.trained, state["trainable"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        if t.ema is not None and state["ema"] is not None:
            t.ema.module.load_state_dict(state["ema"])
        if t.scaler is not None and state["scaler"] is not None:
            t.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
    except ScaleshiftError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise ScaleshiftError(f"--resume: {path} does not fit this run ({type(exc).__name__}: "
                              f"{str(exc)[:120]}); {fix}") from None
    epoch, history = state["epoch"], state["history"]
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch <= t.total_epochs
            and isinstance(history, list) and len(history) == epoch):
        raise ScaleshiftError(f"--resume: {path} records no consistent epoch count (epoch "
                              f"{str(epoch)[:20]}, {len(history) if isinstance(history, list) else 'no'} "
                              f"history rows); {fix}")
    needed = ["train_loss"] + (["val_top1"] if t.loaders["val"] is not None else [])
    for number, row in enumerate(history, 1):
        if not (isinstance(row, dict) and row.get("epoch") == number
                and all(isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)
                        and math.isfinite(row[k]) for k in needed)):
            raise ScaleshiftError(f"--resume: {path}: history row {number} is not that epoch's "
                                  f"record (epoch, {', '.join(needed)}); it was edited or damaged; "
                                  f"{fix}")
    return epoch, history

"""The `scaleshift` command. Subcommands stay thin: they parse, call the library, print.

Every subcommand takes its options as flags or as key=value in any order and mix (the one
grammar of options.py): `scaleshift train R.yaml --resume epochs=3`, `scaleshift params
model=vit_base_patch16_224 method=ssf layers=4`, `scaleshift bench --model M model_kwargs.img_size=32`.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys

import torch

from .errors import Interrupted, ScaleshiftError
from .options import assign_flags, is_assignment, parse_assignments

MERGE_TOLERANCE = 1e-5
# a file system refusing a write or a path: one line naming the path and what to do
FILE_SYSTEM_HINTS = {
    errno.ENOSPC: "the disk is full: free space or write elsewhere (nothing was half-written)",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.EACCES: "no permission: choose a location you can write to",
    errno.EPERM: "no permission: choose a location you can write to",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EISDIR: "that path is a folder where a file is needed: choose another path",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
    errno.EEXIST: "a file (or a dangling link) stands where a folder is needed: choose another path",
    errno.ENOENT: "that path does not exist and cannot be made here: check it or choose another",
    errno.ELOOP: "a symbolic link on that path leads back to itself: remove the loop or choose "
                 "another path",
}


def written_path(filename) -> str:
    """The path the user asked for, in place of the temporary file or folder next to it that an
    atomic write (io.atomic_path / atomic_dir) was making when the file system refused."""
    import re
    from pathlib import Path
    path = Path(os.fsdecode(filename))
    temporary = re.fullmatch(r"\.(.+?)\.(?:old\.)?[A-Za-z0-9_]{8}(?:\.tmp)?", path.name)
    return str(path.parent / temporary.group(1)) if temporary else str(path)


def _params_row(model_name: str, method: str, num_classes: int, opts: dict) -> dict:
    from . import apply, create_model, total_parameters, trainable_parameters
    from .methods import config_of
    with torch.device("meta"):   # shapes only: counting needs no weights
        model = create_model(model_name, num_classes=num_classes)
        apply(model, method, **opts)
    return dict(model=model_name, method=method, trainable=trainable_parameters(model),
                total=total_parameters(model), options=config_of(model)["options"])


def cmd_params(args) -> int:
    from . import methods
    from .methods import get_method
    opts = args.options
    chosen = args.method.split(",") if args.method else methods()
    if not args.method:
        unknown = sorted(set(opts) - {k for method in chosen for k in get_method(method).options})
        if unknown:
            raise ScaleshiftError(f"{unknown[0]} is an option of no method; `scaleshift methods` "
                                  f"lists each method's options")
    rows = []
    for method in chosen:
        known = {k: v for k, v in opts.items() if k in get_method(method).options} \
            if not args.method else opts
        try:
            rows.append(_params_row(args.model, method, args.num_classes, known))
        except ScaleshiftError as exc:
            if args.method:
                raise
            rows.append(dict(model=args.model, method=method, error=str(exc)))
    if all("error" in r for r in rows):   # no method applies: the model or an option is wrong
        raise ScaleshiftError(rows[0]["error"])
    if args.json:
        out = [{k: r.get(k) for k in ("model", "method", "trainable", "total")} for r in rows]
        print(json.dumps(out[0] if len(out) == 1 else out))
        return 0
    print(f"{'model':32} {'method':12} {'trainable':>12} {'total':>12}  {'(M)':>7}  options")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:32} {r['method']:12} {'n/a':>12}  {r['error']}")
            continue
        options = " ".join(f"{k}={v}" for k, v in r["options"].items())
        print(f"{r['model']:32} {r['method']:12} {r['trainable']:>12} {r['total']:>12}  "
              f"{r['trainable'] / 1e6:>6.2f}M  {options}")
    return 0


def cmd_merge_check(args) -> int:
    from .merge import merge_check
    report = merge_check(args.model, args.method, args.num_classes, **args.options)
    if args.json:
        print(json.dumps(report))
    else:
        for key in ("model", "method", "max_abs_diff", "max_rel_diff", "plain_strict_load",
                    "extra_params"):
            print(f"{key:18} {report[key]}")
        print(f"{'non_mergeable':18} {len(report['non_mergeable'])}")
        for item in report["non_mergeable"]:
            print(f"  - {item['module']}: {item['reason']}")
    exact = report["max_rel_diff"] <= MERGE_TOLERANCE
    if report["non_mergeable"]:
        return 0 if exact else 1
    return 0 if exact and report["plain_strict_load"] and report["extra_params"] == 0 else 1


def cmd_methods(args) -> int:
    from .methods import get_method, methods
    for name in args.names or methods():
        method = get_method(name)
        print(f"{name:12} {method.description}")
        for key, option in method.options.items():
            choices = f" {{{', '.join(map(str, option.choices))}}}" if option.choices else ""
            print(f"    {key}={option.default}{choices}: {option.help}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(out_dir=args.out, epochs=args.epochs, seed=args.seed, task=args.task, backbone=args.backbone)
    return 0


def cmd_train(args) -> int:
    from .config import check_environment, load_recipe
    from .engine import train
    if args.recipe is None and not args.overrides:
        raise ScaleshiftError("train needs a recipe (or key=value settings): `scaleshift train "
                              "builtin/digits_ssf` fine-tunes a small pretrained ConvNeXt on the "
                              "built-in digits in a few minutes; `scaleshift list recipes` lists "
                              "every packaged recipe, and a YAML file of config keys works too")
    cfg = load_recipe(args.recipe, args.overrides)   # every error surfaces before any work
    check_environment(cfg)                           # data paths, weights file, optional packages
    if args.validate_only:
        from .engine import check_model
        checked = check_model(cfg)
        print(f"{args.recipe or 'defaults'}: valid (config, data paths, optional packages; {checked})")
        return 0
    train(cfg, resume=args.resume)
    return 0


def cmd_eval(args) -> int:
    from pathlib import Path

    from .adapter_files import resolve_dir
    from .runs import CONFIG, evaluate_artifact, evaluate_run
    source = args.run_dir
    pretrained = checked_pretrained(args)
    is_file = Path(source).is_file()
    if not is_file and (resolve_dir(source, "run") / CONFIG).is_file():
        metrics = evaluate_run(source, merged=args.merged, split=args.split, weights=args.weights,
                               device=args.device, dataset=args.dataset, data_root=args.data_root,
                               pretrained=pretrained)
        print(json.dumps(dict(run=source, merged=args.merged, weights=args.weights or "reported",
                              **metrics)))
        return 0
    if args.merged or args.weights:
        raise ScaleshiftError("--merged and --weights choose among a run folder's weights; "
                              f"{source} is not a run folder")
    metrics = evaluate_artifact(source, args.dataset, args.data_root, args.split, args.device,
                                pretrained=pretrained)
    print(json.dumps(dict(artifact=source, dataset=args.dataset, **metrics)))
    return 0


def cmd_merge(args) -> int:
    from .export import export_safetensors, export_timm
    fmt = args.format or ("safetensors" if str(args.out or "").endswith(".safetensors") else "timm")
    export = export_timm if fmt == "timm" else export_safetensors
    report = export(args.run_dir, args.out, args.weights, overwrite=args.overwrite,   # checks a strict load
                    pretrained=checked_pretrained(args))
    print(f"merged into plain timm weights ({report['tensors']} tensors): {report['path']}")
    if fmt == "timm":
        print(f"load it with {report['load_with']}")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from .io import write_text
    from .report import (build_tables, claim_report_dir, load_logs, load_results, plot_curves,
                         to_csv, to_markdown)
    tables = build_tables(load_results(args.run_dirs))
    logs = load_logs(args.run_dirs) if args.out else None   # every input read before any write
    markdown = to_markdown(tables)
    print(markdown)
    if args.out:
        out = Path(args.out)
        claim_report_dir(out, args.overwrite)
        for name, text in (("report.md", markdown), ("report.csv", to_csv(tables))):
            write_text(out / name, text)
        drawn_with = plot_curves(logs, out / "curves.png")
        note = "" if drawn_with == "matplotlib" else (
            " (drawn with Pillow: matplotlib is not installed; pip install 'scaleshift[plots]' "
            "for matplotlib's figure)")
        print(f"written: {out / 'report.md'}, {out / 'report.csv'}, {out / 'curves.png'}{note}")
    return 0


def model_names(pattern: str | None = None) -> list[str]:
    """Every name create_model builds (timm architectures and the embedded backbones), filtered
    by a glob pattern."""
    import fnmatch

    import timm

    from .backbones.embedded import EMBEDDED
    names = sorted({*timm.list_models(), *EMBEDDED})
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def cmd_list(args) -> int:
    import fnmatch

    from .config import recipe_names
    if args.pattern and args.filter and args.pattern != args.filter:
        raise ScaleshiftError("give the pattern once: `scaleshift list models PATTERN` "
                              "(--filter is the same thing)")
    pattern = args.pattern or args.filter
    if pattern and args.what not in ("models", "recipes"):
        raise ScaleshiftError(f"a pattern filters models or recipes, e.g. `scaleshift list models "
                              f"'vit_*'`, not {args.what}")
    if args.what in ("models", "recipes"):   # one name per line, nothing else: pipe it
        names = model_names(pattern) if args.what == "models" else \
            [n for n in recipe_names() if not pattern or fnmatch.fnmatchcase(n, pattern)]
        if not names:
            examples = "'vit_*', '*convnext*'" if args.what == "models" else "'vtab/*', '*_ssf'"
            raise ScaleshiftError(f"no {args.what[:-1]} name matches {pattern!r}; the pattern is a "
                                  f"glob, e.g. {examples}" if pattern else
                                  f"no {args.what} found (is scaleshift installed with its package data?)")
        print("\n".join(names))
        return 0
    if args.what == "all":
        print("recipes (scaleshift train NAME):")
        for name in recipe_names():
            print(f"  {name}")
    if args.what in ("methods", "all"):
        from .methods import methods
        print("methods: " + ", ".join(methods()))
    if args.what in ("datasets", "all"):
        from .data import list_datasets
        print("datasets: " + ", ".join(list_datasets()))
    if args.what == "all":
        print(f"models: {len(model_names()):,} names (timm architectures and scaleshift's embedded "
              f"backbones); list them with `scaleshift list models [PATTERN]`")
    return 0


def cmd_bench(args) -> int:
    from .bench import format_table, run_bench
    parts = {x for x in args.parts.split(",") if x}
    if not parts:
        raise ScaleshiftError("--parts is empty, so nothing would be measured; pass some of "
                              "time,memory,merge")
    if parts - {"time", "memory", "merge"}:
        raise ScaleshiftError(f"--parts: unknown {sorted(parts - {'time', 'memory', 'merge'})}; "
                              f"choose from time, memory, merge")
    result = run_bench(args.model, args.batch_size, args.device, args.rounds, args.model_kwargs,
                       args.size, args.out, with_memory="memory" in parts and not args.no_memory,
                       profile=[x for x in (args.profile or "").split(",") if x],
                       precision=args.precision,
                       modes=[x for x in (args.modes or "").split(",") if x],
                       with_time="time" in parts, with_merge="merge" in parts and not args.no_memory,
                       command=" ".join(["scaleshift", *sys.argv[1:]]))
    print(format_table(result))
    if args.out:
        from pathlib import Path
        written = [n for n in ("bench.json", "bench.csv", "bench.png", "results.md") if (Path(args.out) / n).is_file()]
        print(f"written: {args.out}/{', '.join(written)}")
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx, export_safetensors, export_timm
    export = dict(timm=export_timm, safetensors=export_safetensors, onnx=export_onnx)[args.format]
    report = export(args.run_dir, args.out, weights=args.weights, overwrite=args.overwrite,
                    pretrained=checked_pretrained(args))
    print(json.dumps(report, indent=1))
    return 0


def cmd_predict_artifact(args) -> int:
    from .artifacts import format_csv, format_table, image_files, load_artifact, predict
    from .runs import parse_device
    device = parse_device(args.device)
    paths = image_files(args.images)                 # every image found before any model
    artifact = load_artifact(args.model, args.input_size, pretrained=args.pretrained)
    if args.input_size is not None:
        check_predict_size(artifact.model, artifact.transform, args.input_size)
    rows = predict(artifact, paths, args.top_k, device)
    print(json.dumps(rows, indent=1) if args.json else format_csv(rows) if args.csv
          else format_table(rows))
    return 0


def check_predict_size(model, transform, size: int, *more_inputs) -> None:
    """--input-size N the model cannot take: a usage error before any image is predicted."""
    from PIL import Image

    from .profiles import check_takes_input
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = transform(Image.new("RGB", (size, size)))[None].to(device)
    check_takes_input(model, probe, f"--input-size {size}", "leave --input-size out to predict at "
                      "the size the model was trained at", *(x.to(device) for x in more_inputs))


def cmd_predict(args) -> int:
    from .data.images import check_top_k
    args.top_k = check_top_k(args.top_k)
    if bool(args.model) == bool(args.adapters):
        raise ScaleshiftError("predict takes --model ARTIFACT (a run, an adapter, a merged model, "
                              "an ONNX file) or --adapters A1,A2 (many tasks on one backbone)")
    if args.json and args.csv:
        raise ScaleshiftError("choose one of --json and --csv")
    from .records import check_input_size
    args.input_size = check_input_size(args.input_size)
    checked_pretrained(args)
    if args.model:
        return cmd_predict_artifact(args)
    from .adapter_files import resolve_dir, serving_transform
    from .artifacts import image_files
    from .data.images import read_image_for_predict
    from .multitask import MultiTaskModel
    from .runs import parse_device
    device = parse_device(args.device)
    sources = [d for d in args.adapters.split(",") if d]
    check_distinct_adapters(sources)
    paths = image_files(args.images)
    for path in paths:   # every image readable before any model (read again batch by batch)
        read_image_for_predict(path)
    directories = [resolve_dir(source) for source in sources]
    model = MultiTaskModel.from_adapters(directories, pretrained=args.pretrained or None).to(device)
    metas = model.records
    for source, meta in zip(sources, metas):
        if meta["eval_transform"] is None:
            print(f"scaleshift: note: {source} predates recorded eval transforms; using the VTAB "
                  f"transform at the backbone's input size", file=sys.stderr)
    transforms = [serving_transform(meta, model.backbone, args.input_size) for meta in metas]
    if args.input_size is not None:
        check_predict_size(model, transforms[0], args.input_size, torch.zeros(1, dtype=torch.long))
    tasks = len(directories)
    out = []
    for start in range(0, len(paths), 32):
        chunk = paths[start:start + 32]
        # each task's images through that task's own eval transform, all in one batch: sample
        # i*T + t goes to task t
        samples = [transforms[t](read_image_for_predict(path)) for path in chunk for t in range(tasks)]
        if len({tuple(x.shape) for x in samples}) > 1:
            raise ScaleshiftError("the adapters evaluate at different input sizes; predict them "
                                  "separately, or pass --input-size N")
        with torch.no_grad():
            logits = model(torch.stack(samples).to(device),
                           torch.arange(tasks, device=device).repeat(len(chunk)))
        for i, path in enumerate(chunk):
            per_task = {}
            for t, (source, meta) in enumerate(zip(sources, metas)):
                probs = logits[i * tasks + t].float().cpu().softmax(0)
                top = probs.topk(min(args.top_k, len(probs)))
                classes = meta["class_names"]
                per_task[source] = [dict(label=classes[c] if classes else c, index=c, p=round(float(p), 4))
                                    for p, c in zip(top.values, top.indices.tolist())]
            out.append(dict(image=str(path), tasks=per_task))
    if args.csv:   # one row per image, task and rank
        from .artifacts import format_csv
        print(format_csv([dict(image=row["image"], task=task, top=top) for row in out
                          for task, top in row["tasks"].items()]))
    else:
        print(json.dumps(out, indent=1))
    return 0


def cmd_adapters(args) -> int:
    from pathlib import Path

    from .adapter_files import WEIGHTS_NAME, read_adapter_config, resolve_dir
    from .models import plain_model
    rows, backbones = [], set()
    check_distinct_adapters(args.directories)
    for source in args.directories:
        directory = resolve_dir(source)
        meta = read_adapter_config(directory)
        backbones.add(json.dumps(meta["base_model"], sort_keys=True))
        size = sum(f.stat().st_size for f in Path(directory).iterdir() if f.is_file())
        with torch.device("meta"):
            full = plain_model(meta["base_model"], meta["num_classes"])
        full_bytes = sum(p.numel() * 4 for p in full.parameters())   # fp32 checkpoint
        rows.append(dict(adapter=str(source), method=meta["method"], classes=meta["num_classes"],
                         bytes=size, weights_bytes=(Path(directory) / WEIGHTS_NAME).stat().st_size,
                         full_model_bytes=full_bytes, fraction=size / full_bytes))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'adapter':40} {'method':8} {'classes':>7} {'adapter':>12} {'full model':>12} {'ratio':>8}")
    for r in rows:
        print(f"{r['adapter']:40} {r['method']:8} {r['classes']:>7} {r['bytes']:>12,} "
              f"{r['full_model_bytes']:>12,} {100 * r['fraction']:>7.2f}%")
    total = sum(r["bytes"] for r in rows)
    shared = "one backbone" if len(backbones) == 1 else f"{len(backbones)} different backbones"
    print(f"{len(rows)} tasks: {total:,} bytes of adapters + {shared}, instead of "
          f"{sum(r['full_model_bytes'] for r in rows):,} bytes for {len(rows)} full models")
    return 0


def check_distinct_adapters(sources: list[str]) -> None:
    """The same adapter named twice would be one task counted (or served) twice."""
    from pathlib import Path
    seen: dict[str, str] = {}
    for source in sources:
        key = str(Path(source).resolve()) if Path(source).exists() else source
        if key in seen:
            raise ScaleshiftError(f"{seen[key]} and {source} are the same adapter; name each task once")
        seen[key] = source


TRAIN_EXAMPLES = """\
examples:
  # one run: a packaged recipe with overrides
  scaleshift train builtin/digits_ssf epochs=20 lr=1e-3 method=bias out_dir=runs/digits_bias
  scaleshift train builtin/digits_ssf --epochs 20 --lr=1e-3 --out-dir runs/digits_ssf
  # continue after a crash or a kill: the same recipe and overrides, plus --resume
  scaleshift train builtin/digits_ssf epochs=20 lr=1e-3 method=bias out_dir=runs/digits_bias --resume
  # 4 processes on one machine (batch_size stays the global batch)
  torchrun --nproc_per_node=4 -m scaleshift.cli train cifar100/vit_b16_ssf out_dir=runs/c100_ssf"""


def train_epilog() -> str:
    from .config import describe_keys
    return (f"config keys (KEY=VALUE; a.b=VALUE sets one key of a mapping; values are YAML, "
            f"out_dir, data_root and pretrained paths are taken as written):\n"
            f"{describe_keys()}\n\n{TRAIN_EXAMPLES}")


def overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out that scaleshift wrote (a file or folder it did "
                        "not write is never replaced)")


def pretrained_arg(p: argparse.ArgumentParser, what: str = "the run's") -> None:
    p.add_argument("--pretrained", default=None, metavar="FILE",
                   help=f"{what} backbone weights file (a local-dir: backbone's folder), when it "
                        f"has moved since training; its sha256 must match the recorded one")


def checked_pretrained(args) -> str | None:
    """--pretrained as given, after checking that it is a readable file (or a folder: a
    local-dir: backbone's)."""
    if args.pretrained is None or os.path.isdir(args.pretrained):
        return args.pretrained
    from .records import regular_file
    regular_file(args.pretrained, "--pretrained: weights file")
    return args.pretrained


def weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None,
                   help="which of the run's weights: the reported ones (default), or final, "
                        "selected, best, final_without_ema as results.json lists them")


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vit_base_patch16_224", help="timm model name")
    p.add_argument("--method",
                   help="method name (params: comma-separated, default all); see `scaleshift methods`")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--opt", action="append", metavar="KEY=VALUE",
                   help="method option (or give KEY=VALUE bare)")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_model_parsers(sub) -> None:
    """`params`, `merge-check` and `methods`: a model and a method, no data."""
    p = sub.add_parser("params", help="count trainable and total parameters "
                       "(all methods when --method is omitted)")
    model_args(p)
    p.set_defaults(func=cmd_params, rest="options")
    p = sub.add_parser("merge-check", help="prove merge exactness on random weights")
    model_args(p)
    p.set_defaults(func=cmd_merge_check, rest="options", required=("method",))
    p = sub.add_parser("methods", help="list methods and their options")
    p.add_argument("names", nargs="*", metavar="METHOD", help="only these methods (default: all)")
    p.set_defaults(func=cmd_methods)


# demo.DEMOS's keys, the default first (kept here so that building the parser imports no engine)
DEMO_BACKBONES = ["vit_small_patch14_dinov2", "tf_efficientnet_lite0", "scaleshift_vit32"]


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="SSF vs linear vs full on a real pretrained ViT "
                       "(DINOv2 ViT-S/14): train, merge, verify, table + plot")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of every run")
    p.add_argument("--backbone", default=DEMO_BACKBONES[0], choices=DEMO_BACKBONES)
    p.add_argument("--task", default=None, help="a built-in dataset (default: the backbone's demo task)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train from a recipe: scaleshift train RECIPE key=value ...",
                       description="Train from a recipe: a packaged recipe name (`scaleshift list\n"
                       "recipes`, e.g. vtab/dtd_ssf) or a YAML file (a real path wins), then\n"
                       "overrides as KEY=VALUE, --KEY VALUE or --KEY=VALUE, before or after the\n"
                       "flags. An unknown key (with the closest ones named), a wrong type, a\n"
                       "missing data_root or weights file, or a missing optional package the run\n"
                       "needs is an error before any work.",
                       epilog=train_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="packaged recipe name or YAML file (omit it to "
                   "start from the defaults, which then need key=value settings)")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt")
    p.add_argument("--validate-only", action="store_true",
                   help="check the config, its data and weights paths and the optional packages it "
                        "needs, then stop")
    p.set_defaults(func=cmd_train)


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a run (its adapter, or merged) or any artifact "
                       "(adapter, merged folder or file, ONNX file) on a dataset")
    p.add_argument("run_dir", metavar="ARTIFACT", help="a run folder (or Hub repo id); or an "
                   "adapter, merged folder, .safetensors or .onnx file with --dataset")
    p.add_argument("--dataset", default=None, help="evaluate on this dataset instead of the run's")
    p.add_argument("--data-root", default=None, help="the dataset's folder instead of the run's")
    p.add_argument("--merged", action="store_true", help="evaluate the merged plain model")
    p.add_argument("--split", default=None, help="default: the run's test split, its first test_limit "
                   "images if the run set test_limit (as its reported top-1 did); a split named "
                   "here is evaluated whole")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    weights_arg(p)
    pretrained_arg(p, "the run's or the adapter's")
    p.set_defaults(func=cmd_eval)


def add_merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="fold a run's adapter into plain weights: timm's folder "
                       "(RUN/merged: config.json with class names and eval transform + "
                       "model.safetensors, loads with timm.create_model('local-dir:RUN/merged', "
                       "pretrained=True))")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="folder (or a .safetensors file: the bare weights)")
    p.add_argument("--format", choices=("timm", "safetensors"), default=None,
                   help="timm: the folder (default); safetensors: one file (the default for an "
                        "--out ending in .safetensors)")
    weights_arg(p)
    pretrained_arg(p)
    overwrite_arg(p)
    p.set_defaults(func=cmd_merge)


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="tables in the paper's shape from run directories")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default=None,
                   help="directory for report.md, report.csv and curves.png (training curves)")
    overwrite_arg(p)
    p.set_defaults(func=cmd_report)


def add_list_parser(sub) -> None:
    p = sub.add_parser("list", help="recipes, methods, models, datasets")
    p.add_argument("what", nargs="?", default="all",
                   choices=("all", "recipes", "methods", "models", "datasets"))
    p.add_argument("pattern", nargs="?", default=None,
                   help="glob filter for models or recipes: `list models 'vit_*'`, `list recipes 'vtab/*'`")
    p.add_argument("--filter", default=None, help="the same as PATTERN")
    p.set_defaults(func=cmd_list)


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="training / inference time and memory of every method")
    p.add_argument("--model", help="timm or embedded model name (required)")
    p.add_argument("--batch-size", type=int, help="(required)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--size", type=int, default=None, help="input resolution (default: the model's)")
    p.add_argument("--out", default=None, help="directory for bench.json, bench.csv, bench.png")
    p.add_argument("--profile", default=None,
                   help="comma-separated trained variants to profile with torch.profiler, e.g. "
                        "ssf,bias,full (writes profile_<variant>.txt under --out)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes (and the merge's)")
    p.add_argument("--parts", default="time,memory,merge",
                   help="what to measure: time (every method's step), memory (peak per method), "
                        "merge (peak growth of scaleshift.merge, CPU); default all three")
    p.add_argument("--modes", default=None,
                   help="also time the full, bias and SSF steps in these modes, interleaved with "
                        "fp32 eager: bf16, compiled (torch.compile), compiled_bf16")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: every measured forward under torch.autocast(device, bfloat16)")
    p.set_defaults(func=cmd_bench, model_kwargs={},   # timm kwargs: model_kwargs.img_size=32
                   required=("model", "batch_size"))


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="merged plain weights (timm's folder, safetensors) or an "
                       "ONNX graph (class names and eval transform in its metadata_props), checked")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=("safetensors", "timm", "onnx"), default="safetensors")
    p.add_argument("--out", default=None)
    weights_arg(p)
    pretrained_arg(p)
    overwrite_arg(p)
    p.set_defaults(func=cmd_export)


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes of images from any artifact (--model), or "
                       "many SSF tasks on one backbone in one batch (--adapters)")
    p.add_argument("--model", default=None, help="a run folder, an adapter of any method, a merged "
                   "folder or .safetensors file, or an .onnx file (output: a table; --json, --csv)")
    p.add_argument("--adapters", help="comma-separated SSF adapters: directories or Hugging Face "
                   "Hub repo ids (output: JSON)")
    p.add_argument("--json", action="store_true", help="with --model: JSON instead of the table")
    p.add_argument("--csv", action="store_true", help="with --model: CSV (image,rank,label,index,p)")
    pretrained_arg(p, "the run's, the adapter's or the adapters'")
    p.add_argument("--input-size", type=int, default=None,
                   help="override the input size of the adapters' recorded eval transform")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("images", nargs="+", help="image files or folders of them")
    p.set_defaults(func=cmd_predict)


def add_adapters_parser(sub) -> None:
    p = sub.add_parser("adapters", help="size of each adapter against its full model")
    p.add_argument("directories", nargs="+", help="adapter directories or Hugging Face Hub repo ids")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adapters)


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__
    parser = argparse.ArgumentParser(prog="scaleshift", description=__doc__)
    parser.add_argument("--version", action="version", version=f"scaleshift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser in (add_model_parsers, add_demo_parser, add_train_parser, add_eval_parser,
                       add_merge_parser, add_report_parser, add_list_parser, add_bench_parser,
                       add_export_parser, add_predict_parser, add_adapters_parser):
        add_parser(sub)
    from .pretrain import add_pretrain_parser
    add_pretrain_parser(sub)
    from .analyze import add_analyze_parser
    add_analyze_parser(sub)
    from .data.cli import add_datasets_parser
    add_datasets_parser(sub)
    for name, command in sub.choices.items():
        if command.get_default("command_parser") is None:
            command.set_defaults(command_parser=command)
    return parser


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Flags through argparse; every bare KEY=VALUE (wherever it stands) through the one option
    grammar: config overrides for `train`, the subcommand's own flags or mapping otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((i for i, t in enumerate(argv) if not t.startswith("-")), None)
    if command is not None and argv[command] == "train":   # --key value for every config key
        from .config import flags_to_assignments
        train = next(a for a in parser._actions
                     if isinstance(a, argparse._SubParsersAction)).choices["train"]
        own = {o for a in train._actions for o in a.option_strings}
        argv[command + 1:] = flags_to_assignments(argv[command + 1:], own)
    args, extras = parser.parse_known_args(argv)
    unknown = [e for e in extras if not is_assignment(e)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    tokens = list(extras)
    for name in ("images", "run_dirs", "directories"):   # greedy positionals may hold some
        if isinstance(getattr(args, name, None), list):
            tokens += [t for t in getattr(args, name) if is_assignment(t)]
            setattr(args, name, [t for t in getattr(args, name) if not is_assignment(t)])
    if args.command == "train":
        if args.recipe and is_assignment(args.recipe):   # no recipe: defaults + overrides
            args.recipe, tokens = None, [args.recipe, *tokens]
        args.overrides = tokens
        return args
    rest = getattr(args, "rest", None)
    if rest:
        setattr(args, rest, {})
    tokens = list(getattr(args, "opt", None) or []) + tokens
    assign_flags(args.command_parser, args, parse_assignments(tokens), rest=rest)
    # required options are checked here, not by argparse, so that KEY=VALUE can give them too
    missing = [k for k in getattr(args, "required", ()) if getattr(args, k) is None]
    if missing:
        args.command_parser.error("the following options are required: " + ", ".join(
            f"--{k.replace('_', '-')} (or {k}=...)" for k in missing))
    for name, value in vars(args).items():   # a path given as "" would be read as "."
        if name in ("out", "out_dir", "root", "data_root", "pretrained") and isinstance(value, str) \
                and not value.strip():
            raise ScaleshiftError(f"--{name.replace('_', '-')} is empty; pass a path")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse_command_line(parser, argv)
        return args.func(args)
    except ScaleshiftError as exc:
        print(f"scaleshift: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:   # output piped into `head` and cut short
        sys.stderr.close()
        return 0
    except OSError as exc:
        hint = FILE_SYSTEM_HINTS.get(exc.errno)
        if hint is None:
            raise
        where = f"{written_path(exc.filename)}: " if exc.filename else ""
        print(f"scaleshift: error: {where}{exc.strerror or exc}; {hint}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"scaleshift: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("scaleshift: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `scaleshift` command. Subcommands stay thin: they parse, call the library, print."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .errors import ScaleshiftError

MERGE_TOLERANCE = 1e-5


def parse_opts(pairs: list[str] | None) -> dict[str, str]:
    opts = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ScaleshiftError(f"--opt takes key=value, got {pair!r} (e.g. --opt layers=4)")
        opts[key.strip()] = value.strip()
    return opts


def _params_row(model_name: str, method: str, num_classes: int, opts: dict) -> dict:
    from . import apply, create_model, total_parameters, trainable_parameters
    with torch.device("meta"):   # shapes only: counting needs no weights
        model = create_model(model_name, num_classes=num_classes)
        apply(model, method, **opts)
    return dict(model=model_name, method=method, trainable=trainable_parameters(model),
                total=total_parameters(model), options=model.scaleshift_config["options"])


def cmd_params(args) -> int:
    from . import methods
    from .methods import get_method
    opts = parse_opts(args.opt)
    chosen = args.method.split(",") if args.method else methods()
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
    report = merge_check(args.model, args.method, args.num_classes, **parse_opts(args.opt))
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
    for name in methods():
        method = get_method(name)
        print(f"{name:12} {method.description}")
        for key, option in method.options.items():
            choices = f" {{{', '.join(map(str, option.choices))}}}" if option.choices else ""
            print(f"    {key}={option.default}{choices}: {option.help}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(out_dir=args.out, steps=args.steps, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog="scaleshift", description=__doc__)
    parser.add_argument("--version", action="version", version=f"scaleshift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p, method_required: bool):
        p.add_argument("--model", default="vit_base_patch16_224", help="timm model name")
        p.add_argument("--method", required=method_required,
                       help="method name (params: comma-separated, default all); see `scaleshift methods`")
        p.add_argument("--num-classes", type=int, default=100)
        p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("params", help="count trainable and total parameters "
                       "(all methods when --method is omitted)")
    model_args(p, method_required=False)
    p.set_defaults(func=cmd_params)
    p = sub.add_parser("merge-check", help="prove merge exactness on random weights")
    model_args(p, method_required=True)
    p.set_defaults(func=cmd_merge_check)
    p = sub.add_parser("methods", help="list methods and their options")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("demo", help="SSF end to end on a built-in task: train, merge, verify")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ScaleshiftError as exc:
        print(f"scaleshift: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

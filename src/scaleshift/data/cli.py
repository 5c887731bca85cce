"""The `datasets` subcommand. Hook it into the main parser with

    from .data.cli import add_datasets_parser
    add_datasets_parser(sub)          # sub = parser.add_subparsers(...)

    scaleshift datasets [--json] [--group GROUP]       list every dataset with its layout
    scaleshift datasets check NAME --root PATH [--json] [--strict] [--split S]...
                              [--num-classes N] [--opt KEY=VALUE]... [--no-decode]

Handlers return an exit code; a ScaleshiftError propagates (the main CLI turns it into exit 2).
"""
from __future__ import annotations

import argparse
import json

from .check import check_dataset, format_report
from .registry import get_dataset_spec, list_datasets



def _splits_text(splits) -> str:
    return ", ".join(splits) if len(splits) <= 6 else \
        f"{', '.join(splits[:3])}, ... ({len(splits)} splits)"


def cmd_datasets(args) -> int:
    specs = [get_dataset_spec(name) for name in list_datasets(args.group)]
    if args.json:
        print(json.dumps([dict(name=s.name, group=s.group, classes=s.num_classes,
                               splits=list(s.splits), layout=s.layout, needs_root=s.needs_root,
                               description=s.description, aliases=list(s.names))
                          for s in specs], indent=2))
        return 0
    print(f"{'name':28} {'group':15} {'classes':>7}  splits")
    for spec in specs:
        classes = "tree" if spec.num_classes is None else str(spec.num_classes)
        print(f"{spec.name:28} {spec.group:15} {classes:>7}  {_splits_text(spec.splits)}")
        print(f"    {spec.description}")
        for line in spec.layout.splitlines():
            print(f"    | {line}")
    return 0


def cmd_datasets_check(args) -> int:
    options = dict(args.options)
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    report = check_dataset(args.name, args.root, strict=args.strict, splits=args.split,
                           decode=not args.no_decode, **options)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def add_datasets_parser(subparsers) -> argparse.ArgumentParser:
    """Add `datasets` (list) and `datasets check` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "datasets", help="list datasets and their on-disk layouts; check a tree",
        description="List every dataset scaleshift reads (classes, splits, exact on-disk "
                    "layout), or validate a tree with `datasets check`.")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--group", help="only this group (fgvc, natural, specialized, "
                                        "structured, classification, robustness, builtin)")
    parser.set_defaults(func=cmd_datasets)
    sub = parser.add_subparsers(dest="datasets_command", metavar="{check}")
    check = sub.add_parser(
        "check", help="validate a dataset tree: image counts, classes, unreadable files",
        description="Decode every image of every split; report per-split counts, the class "
                    "count and each unreadable file (skipped, or an error with --strict).")
    check.add_argument("name", help="dataset name (see `scaleshift datasets`)")
    check.add_argument("--root", help="dataset root folder (built-in datasets need none)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--strict", action="store_true", help="fail on the first unreadable image")
    check.add_argument("--split", action="append", help="check only this split (repeatable)")
    check.add_argument("--num-classes", type=int,
                       help="expected number of classes (default: the dataset's; for partial "
                            "trees)")
    check.add_argument("--opt", action="append", metavar="KEY=VALUE",
                       help="dataset option, e.g. protocol=official, seed=1, sprites=fashion "
                            "(or give KEY=VALUE bare)")
    check.add_argument("--no-decode", action="store_true",
                       help="only check that the files exist (fast, misses corrupt files)")
    check.set_defaults(func=cmd_datasets_check, command_parser=check, rest="options")
    return parser

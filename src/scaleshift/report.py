"""`scaleshift report RUN_DIRS...`: results.json files -> the paper's table shapes, with the
paper's numbers side by side (Markdown + CSV), and the runs' log.jsonl files -> training curves
(curves.png: train loss and val / test top-1 against the epoch, one colour per run; drawn with
Pillow where matplotlib is not installed). A mean column averages only the tasks every row of its
table has, and a note under the table names them and what was left out.

Benchmarks are recognised by dataset: FGVC (Table 3: five datasets, mean, Params), VTAB-1k
(Table 4: 19 tasks, group means, 19-task mean, Params), CIFAR-100 / ImageNet (Table 5: one
column per backbone), anything else (one column per dataset, mean, Params). Runs of different
protocols get tables of their own, each named by its protocol.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path

from .errors import ScaleshiftError
from .extras import require
from .io import atomic_path, claim_folder, figure, save_png
from .records import MAX_FILE_BYTES, parse_json, read_json, regular_file

REPORT_MARKER = ".scaleshift-report"   # written first into every --out folder of `scaleshift report`
REPORT_FILES = ("report.md", "report.csv", "curves.png")


def claim_report_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file or a non-empty folder at `out`, unless it is a folder an earlier report
    wrote (its marker) and --overwrite is given; then mark `out` as a report folder."""
    if out.is_dir() and (out / REPORT_MARKER).is_file() and not overwrite:
        raise ScaleshiftError(f"--out {out} holds an earlier report; pass --overwrite to "
                              f"replace it or another --out (nothing was written)")
    claim_folder(out, REPORT_MARKER, "the report")


FGVC = ["cub2011", "nabirds", "oxford_flowers", "stanford_dogs", "stanford_cars"]
VTAB_GROUPS = {
    "natural": ["cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": ["clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"],
}
VTAB = [t for tasks in VTAB_GROUPS.values() for t in tasks]
METHOD_LABEL = {"full": "Full", "linear": "Linear", "adapter": "Adapter", "bias": "Bias",
                "vpt_shallow": "VPT-Shallow", "vpt_deep": "VPT-Deep", "ssf": "SSF", "lora": "LoRA"}
# the results the SSF paper reports (Lian et al., NeurIPS 2022; top-1 %, params in M)
PAPER_FGVC = {  # CUB, NABirds, Flowers, Dogs, Cars, mean, params
    "full": [87.3, 82.7, 98.8, 89.4, 84.5, 88.54, 85.98],
    "linear": [85.3, 75.9, 97.9, 86.2, 51.3, 79.32, 0.18],
    "adapter": [87.1, 84.3, 98.5, 89.8, 68.6, 85.67, 0.41],
    "bias": [88.4, 84.2, 98.8, 91.2, 79.4, 88.41, 0.28],
    "vpt_shallow": [86.7, 78.8, 98.4, 90.7, 68.7, 84.62, 0.25],
    "vpt_deep": [88.5, 84.2, 99.0, 90.2, 83.6, 89.11, 0.85],
    "ssf": [89.5, 85.7, 99.6, 89.6, 89.2, 90.72, 0.39],
}
PAPER_VTAB_MEAN = {"full": 65.57, "linear": 52.94, "adapter": 55.82, "bias": 62.05,
                   "vpt_shallow": 64.85, "vpt_deep": 69.43, "ssf": 73.10}
PAPER_TABLE5 = {  # (CIFAR-100, ImageNet-1K) per backbone family
    "full": {"vit": (93.82, 83.58), "swin": (93.85, 85.20), "convnext": (94.14, 85.80), "as_mlp": (89.96, None)},
    "linear": {"vit": (88.70, 82.04), "swin": (89.27, 83.25), "convnext": (89.20, 84.05), "as_mlp": (79.04, None)},
    "adapter": {"vit": (93.34, 82.72), "swin": (92.49, 83.82), "convnext": (92.86, 84.49), "as_mlp": (88.01, None)},
    "bias": {"vit": (93.39, 82.74), "swin": (92.19, 83.92), "convnext": (92.80, 84.63), "as_mlp": (87.46, None)},
    "vpt_shallow": {"vit": (90.38, 82.08), "swin": (90.02, 83.29)},
    "vpt_deep": {"vit": (93.17, 82.45), "swin": (92.62, 83.44)},
    "ssf": {"vit": (93.99, 83.10), "swin": (93.06, 84.40), "convnext": (93.45, 84.85), "as_mlp": (88.28, None)},
}


def load_results(run_dirs: list[str | Path]) -> list[dict]:
    rows = []
    for run in run_dirs:
        path = Path(run) / "results.json" if Path(run).is_dir() else Path(run)
        if not path.is_file():
            from .runs import is_run_dir, unfinished
            if Path(run).is_dir() and is_run_dir(Path(run)):
                raise ScaleshiftError(f"{unfinished(Path(run))}; report reads finished runs")
            raise ScaleshiftError(f"{path} not found: pass run directories written by "
                                  f"`scaleshift train` (each holds results.json)")
        data = read_json(path, "run results")
        reported = data.get("reported")
        if isinstance(reported, dict) and "top1" not in reported:
            raise ScaleshiftError(f"{path.parent}: this run has no test top-1 (it trained without a "
                                  f"test split); report compares tested runs: leave it out, or "
                                  f"train it with test_split set")
        fields = dict(model=data.get("model"), method=data.get("method"),
                      dataset=data.get("dataset"), protocol=data.get("protocol"))
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        top1 = reported.get("top1") if isinstance(reported, dict) else None
        params = data.get("trainable_params")
        if not (isinstance(top1, (int, float)) and not isinstance(top1, bool) and 0 <= top1 <= 100):
            bad.append("reported.top1")
        if not (isinstance(params, int) and not isinstance(params, bool) and params >= 0):
            bad.append("trainable_params")
        if bad:
            raise ScaleshiftError(f"{path}: {', '.join(bad)} missing or of the wrong kind; the file "
                                  f"was edited or damaged: leave the run out of the report")
        rows.append(dict(fields, dataset=fields["dataset"].removeprefix("vtab_"), top1=top1,
                         params=params / 1e6, run=str(path.parent)))
    seen: dict[tuple, str] = {}
    for row in rows:   # a table cell holds one run: a second one would silently replace it
        key = (row["model"], row["method"], row["dataset"], row["protocol"])
        if key in seen:
            raise ScaleshiftError(f"{seen[key]} and {row['run']} are both {row['method']} on "
                                  f"{row['model']} / {row['dataset']} ({row['protocol']} protocol), "
                                  f"and a report cell holds one run: pass one of them (report the "
                                  f"others separately)")
        seen[key] = row["run"]
    return rows


def _log_rows(path: Path) -> list[dict]:
    """log.jsonl's rows, each an object with a whole epoch >= 1 and finite numbers for the loss
    and top-1 values the curves draw."""
    text = regular_file(path, "training log", MAX_FILE_BYTES).read_bytes().decode("utf-8", "replace")
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = parse_json(line, f"{path} line {number}")
        numbers = ("train_loss", "val_top1", "test_top1")
        ok = (isinstance(row, dict) and isinstance(row.get("epoch"), int)
              and not isinstance(row["epoch"], bool) and row["epoch"] >= 1 and "train_loss" in row
              and all(isinstance(row[k], (int, float)) and not isinstance(row[k], bool)
                      for k in numbers if k in row))
        if not ok:
            raise ScaleshiftError(f"{path} line {number} is not a training-log row (an object with "
                                  f"epoch, train_loss and top-1 numbers); the file was edited or "
                                  f"damaged: leave the run out of the report or drop --out")
        rows.append(row)
    return rows


def _family(model: str) -> str:
    for key in ("vit", "swin", "convnext", "as_mlp"):
        if model.startswith(key):
            return key
    return model


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _table(title: str, header: list[str], rows: list[list], notes: list[str] = ()) -> dict:
    return dict(title=title, header=header, rows=[[c if isinstance(c, str) else _fmt(c) for c in r]
                                                  for r in rows], notes=list(notes))


def _label(model: str, method: str) -> str:
    return f"{METHOD_LABEL.get(method, method)} ({model})"


def _shared(grouped: dict, tasks: list[str]) -> tuple[list[str], str]:
    """The tasks every row has, in table order, and the note that says what each mean covers
    and which tasks it leaves out (and which rows have them), so that means compare."""
    shared = [t for t in tasks if all(t in per for per in grouped.values())]
    left_out = [t for t in tasks if t not in shared and any(t in per for per in grouped.values())]
    if not shared:
        return [], "mean: none, no task is in every row"
    note = f"mean: over the {len(shared)} task(s) every row has ({', '.join(shared)})"
    if left_out:
        note += "; left out: " + "; ".join(
            f"{t} (only {', '.join(_label(*key) for key, per in grouped.items() if t in per)})"
            for t in left_out)
    return shared, note


def _by_method(results: list[dict]) -> dict:
    grouped = defaultdict(dict)
    for r in results:
        grouped[(r["model"], r["method"])][r["dataset"]] = r
    return grouped


def build_tables(results: list[dict]) -> list[dict]:
    """The tables of each protocol on its own: numbers selected differently (clean: on a
    validation split; official: the last or best test epoch) are never averaged together."""
    return [table for protocol in sorted({r["protocol"] for r in results})
            for table in _protocol_tables([r for r in results if r["protocol"] == protocol], protocol)]


def _protocol_tables(results: list[dict], protocols: str) -> list[dict]:
    tables = []
    fgvc = [r for r in results if r["dataset"] in FGVC]
    vtab = [r for r in results if r["dataset"] in VTAB]
    table5 = [r for r in results if r["dataset"] in ("cifar100", "imagenet")]
    other = [r for r in results if r not in fgvc + vtab + table5]
    if fgvc:
        rows, grouped = [], _by_method(fgvc)
        shared, note = _shared(grouped, FGVC)
        for (model, method), per in grouped.items():
            accs = [per[d]["top1"] if d in per else None for d in FGVC]
            rows.append([_label(model, method), *accs, _mean([per[d]["top1"] for d in shared]),
                         _mean([r["params"] for r in per.values()])])
            if method in PAPER_FGVC:   # the paper's mean over the same datasets
                paper = dict(zip(FGVC, PAPER_FGVC[method]))
                rows.append([f"paper: {METHOD_LABEL[method]}", *paper.values(),
                             _mean([paper[d] for d in shared]), PAPER_FGVC[method][-1]])
        tables.append(_table(f"FGVC (Table 3), top-1 %, protocol {protocols}",
                             ["method", *FGVC, f"mean ({len(shared)})", "params (M)"], rows, [note]))
    if vtab:
        rows, grouped = [], _by_method(vtab)
        shared, note = _shared(grouped, VTAB)
        notes = [note]
        for (model, method), per in grouped.items():
            accs = [per[t]["top1"] if t in per else None for t in VTAB]
            groups = [_mean([per[t]["top1"] for t in tasks if t in shared])
                      for tasks in VTAB_GROUPS.values()]
            rows.append([_label(model, method), *accs, *groups,
                         _mean([per[t]["top1"] for t in shared]),
                         _mean([r["params"] for r in per.values()])])
            if method in PAPER_VTAB_MEAN and len(shared) == len(VTAB):
                rows.append([f"paper: {METHOD_LABEL[method]}", *([None] * (len(VTAB) + 3)),
                             PAPER_VTAB_MEAN[method], None])
        if len(shared) < len(VTAB) and any(m in PAPER_VTAB_MEAN for _, m in grouped):
            notes.append("the paper's rows are left out: it gives the mean over all 19 tasks only")
        tables.append(_table(f"VTAB-1k (Table 4), top-1 %, protocol {protocols}",
                             ["method", *VTAB, "natural", "specialized", "structured",
                              f"mean ({len(shared)})", "params (M)"], rows, notes))
    if table5:
        columns = sorted({(r["dataset"], r["model"]) for r in table5})
        rows = []
        for method in sorted({r["method"] for r in table5}):
            cells = []
            for dataset, model in columns:
                match = [r for r in table5 if (r["dataset"], r["model"], r["method"]) == (dataset, model, method)]
                cells.append(match[0]["top1"] if match else None)
            rows.append([METHOD_LABEL.get(method, method), *cells])
            if method in PAPER_TABLE5:
                paper = PAPER_TABLE5[method]
                rows.append([f"paper: {METHOD_LABEL[method]}",
                             *[(paper.get(_family(m)) or (None, None))[0 if d == "cifar100" else 1]
                               for d, m in columns]])
        tables.append(_table(f"CIFAR-100 / ImageNet-1K (Table 5), top-1 %, protocol {protocols}",
                             ["method", *[f"{d} {m}" for d, m in columns]], rows))
    if other:
        datasets = list(dict.fromkeys(r["dataset"] for r in other))
        rows, grouped = [], _by_method(other)
        shared, note = _shared(grouped, datasets)
        for (model, method), per in grouped.items():
            accs = [per[d]["top1"] if d in per else None for d in datasets]
            rows.append([_label(model, method), *accs, _mean([per[d]["top1"] for d in shared]),
                         _mean([r["params"] for r in per.values()])])
        tables.append(_table(f"Results, top-1 %, protocol {protocols}",
                             ["method", *datasets, f"mean ({len(shared)})", "params (M)"], rows,
                             [note]))
    return tables


def to_markdown(tables: list[dict]) -> str:
    parts = []
    for t in tables:
        parts += [f"### {t['title']}", "", "| " + " | ".join(t["header"]) + " |",
                  "|" + "---|" * len(t["header"])]
        parts += ["| " + " | ".join(row + [""] * (len(t["header"]) - len(row))) + " |"
                  for row in t["rows"]]
        parts += ["", *t.get("notes", ())] if t.get("notes") else []
        parts.append("")
    return "\n".join(parts)


def load_logs(run_dirs: list[str | Path]) -> list[tuple[str, list[dict]]]:
    """(label, the rows of log.jsonl) per run; a two-stage run (clean protocol with
    retrain_split) gives one per stage, labelled RUN/select and RUN/retrain."""
    logs = []
    for run in run_dirs:
        directory = Path(run) if Path(run).is_dir() else Path(run).parent
        paths = [(str(directory), directory / "log.jsonl")] if (directory / "log.jsonl").is_file() \
            else [(f"{directory}/{stage}", directory / stage / "log.jsonl")
                  for stage in ("select", "retrain") if (directory / stage / "log.jsonl").is_file()]
        if not paths:
            raise ScaleshiftError(f"{directory} has no log.jsonl (nor select/ and retrain/ stages "
                                  f"with one): pass run directories written by `scaleshift train`")
        logs += [(label, _log_rows(path)) for label, path in paths]
    return logs


def curves_figure(logs: list[tuple[str, list[dict]]]):
    """Two panels against the epoch: train loss, and top-1 (val solid, test dashed; a run
    tested only at the end shows one point), one colour per run."""
    fig, (loss_ax, top1_ax) = figure(1, 2, figsize=(11, 4))
    for index, (label, rows) in enumerate(logs):
        colour = f"C{index % 10}"
        loss_ax.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], "-o",
                     color=colour, markersize=3, label=label)
        for split, style in (("val", "-o"), ("test", "--s")):
            points = [(r["epoch"], r[f"{split}_top1"]) for r in rows if f"{split}_top1" in r]
            if points:
                top1_ax.plot(*zip(*points), style, color=colour, markersize=3, label=f"{label} {split}")
    for ax, title in ((loss_ax, "train loss"), (top1_ax, "top-1 % (val solid, test dashed)")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# matplotlib's default colour cycle, for the Pillow drawing
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def curves_image(logs: list[tuple[str, list[dict]]], panel: tuple[int, int] = (560, 420)):
    """The two panels of curves_figure drawn with Pillow (a core dependency), for an install
    without matplotlib: val as lines through their points, test as open squares, the axis
    ranges as labels, one colour per run and a legend under each panel."""
    from PIL import Image, ImageDraw
    width, height = panel
    legend = 14 * (2 * len(logs) + 1)
    image = Image.new("RGB", (2 * width, height + legend), "white")
    draw = ImageDraw.Draw(image)
    series = [[], []]   # per panel: (label, colour, points, dashed)
    for index, (label, rows) in enumerate(logs):
        colour = COLOURS[index % len(COLOURS)]
        series[0].append((label, colour, [(r["epoch"], r["train_loss"]) for r in rows], False))
        for split in ("val", "test"):
            points = [(r["epoch"], r[f"{split}_top1"]) for r in rows if f"{split}_top1" in r]
            if points:
                series[1].append((f"{label} {split}", colour, points, split == "test"))
    titles = ("train loss", "top-1 % (val: line, test: squares)")
    for number, (title, lines) in enumerate(zip(titles, series)):
        left, top, right, bottom = number * width + 60, 30, (number + 1) * width - 20, height - 40
        draw.text((left, 8), title, fill="black")
        draw.rectangle((left, top, right, bottom), outline="black")
        points = [p for _, _, pts, _ in lines for p in pts]
        if not points:
            continue
        (x0, x1), (y0, y1) = ((min(v), max(v)) for v in zip(*points))
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

        def at(x, y):
            return (left + (x - x0) / (x1 - x0) * (right - left),
                    bottom - (y - y0) / (y1 - y0) * (bottom - top))
        draw.text((left, bottom + 6), f"epoch {x0:g}", fill="black")
        draw.text((right - 60, bottom + 6), f"epoch {x1:g}", fill="black")
        draw.text((left - 55, top), f"{y1:.3g}", fill="black")
        draw.text((left - 55, bottom - 10), f"{y0:.3g}", fill="black")
        for row, (label, colour, pts, dashed) in enumerate(lines):
            xy = [at(x, y) for x, y in pts]
            if len(xy) > 1 and not dashed:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                box = (x - 3, y - 3, x + 3, y + 3)
                draw.rectangle(box, outline=colour) if dashed else draw.ellipse(box, fill=colour)
            ly = height + 4 + 14 * row
            if dashed:
                draw.rectangle((left + 7, ly + 3, left + 13, ly + 9), outline=colour)
            else:
                draw.line((left, ly + 6, left + 20, ly + 6), fill=colour, width=2)
            draw.text((left + 26, ly), label, fill="black")
    return image


def plot_curves(logs: list[tuple[str, list[dict]]], path: str | Path) -> str:
    """curves.png of load_logs' runs: with matplotlib when it is installed, else drawn with
    Pillow. Returns which."""
    if has_matplotlib():
        save_png(curves_figure(logs), path)
        return "matplotlib"
    with atomic_path(path) as tmp:
        curves_image(logs).save(tmp, format="PNG")
    return "pillow"


def has_matplotlib() -> bool:
    try:
        require("matplotlib", "the report's curves")
        return True
    except ScaleshiftError:
        return False


def to_csv(tables: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for t in tables:
        writer.writerow([t["title"]])
        writer.writerow(t["header"])
        writer.writerows(t["rows"])
        writer.writerows([note] for note in t.get("notes", ()))
        writer.writerow([])
    return buffer.getvalue()

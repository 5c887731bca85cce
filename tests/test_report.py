"""`scaleshift report` (issue 22, item 8): means only over the tasks every row has, with a note
naming what was left out; curves without matplotlib; nothing written when an input is bad."""
import json
import sys

import numpy as np
from PIL import Image

from scaleshift.cli import main
from scaleshift.report import COLOURS, build_tables, curves_image, to_csv, to_markdown


def result(method, dataset, top1, model="m"):
    return dict(model=model, method=method, dataset=dataset, top1=top1, protocol="clean",
                params=0.01, run=f"runs/{method}_{dataset}")


def test_means_cover_only_the_tasks_every_row_has_and_say_what_was_left_out():
    rows = [result("ssf", "digits", 90.0), result("ssf", "faces", 50.0),
            result("linear", "digits", 80.0)]
    (table,) = build_tables(rows)
    assert table["header"] == ["method", "digits", "faces", "mean (1)", "params (M)"]
    assert table["rows"][0][:4] == ["SSF (m)", "90.00", "50.00", "90.00"]   # not 70.00
    assert table["rows"][1][:4] == ["Linear (m)", "80.00", "", "80.00"]
    assert table["notes"] == ["mean: over the 1 task(s) every row has (digits); "
                              "left out: faces (only SSF (m))"]
    assert table["notes"][0] in to_markdown([table]) and table["notes"][0] in to_csv([table])


def test_fgvc_paper_rows_average_the_same_datasets_and_vtab_drops_the_19_task_mean():
    fgvc = build_tables([result("ssf", "cub2011", 80.0), result("ssf", "nabirds", 70.0)])[0]
    paper = [r for r in fgvc["rows"] if r[0] == "paper: SSF"][0]
    assert fgvc["header"][6] == "mean (2)" and paper[6] == f"{(89.5 + 85.7) / 2:.2f}"
    vtab = build_tables([result("ssf", "dtd", 60.0), result("full", "dtd", 50.0),
                         result("full", "eurosat", 90.0)])[0]
    assert not any(r[0].startswith("paper") for r in vtab["rows"])
    assert vtab["header"][-2] == "mean (1)"
    assert "left out: eurosat (only Full (m))" in vtab["notes"][0]
    assert "the paper's rows are left out" in vtab["notes"][1]


def test_each_protocol_gets_tables_of_its_own():
    official = dict(result("ssf", "digits", 70.0), protocol="official")
    clean, other = build_tables([result("ssf", "digits", 90.0), result("ssf", "faces", 50.0), official])
    assert clean["title"].endswith("protocol clean") and other["title"].endswith("protocol official")
    assert clean["rows"][0][:3] == ["SSF (m)", "90.00", "50.00"] and other["rows"][0][:2] == ["SSF (m)", "70.00"]


def test_no_shared_task_gives_no_mean():
    (table,) = build_tables([result("ssf", "digits", 90.0), result("linear", "faces", 80.0)])
    assert [row[3] for row in table["rows"]] == ["", ""]
    assert table["notes"] == ["mean: none, no task is in every row"]


def write_run(directory, method, epochs=3):
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps(dict(
        model="m", method=method, dataset="digits", reported=dict(top1=50.0), protocol="clean",
        trainable_params=10)))
    rows = [dict(epoch=e, train_loss=2.0 / e, val_top1=30.0 + 10 * e) for e in range(1, epochs + 1)]
    rows[-1]["test_top1"] = 55.0
    (directory / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_without_matplotlib_the_curves_are_drawn_with_pillow(tmp_path, monkeypatch, capsys):
    write_run(tmp_path / "a", "ssf")
    write_run(tmp_path / "b", "linear")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "rep")]) == 0
    assert "drawn with Pillow" in capsys.readouterr().out
    with Image.open(tmp_path / "rep" / "curves.png") as image:
        pixels = {tuple(p) for p in np.asarray(image.convert("RGB")).reshape(-1, 3)}
    for colour in COLOURS[:2]:   # one colour per run
        assert tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5)) in pixels


def test_the_pillow_drawing_puts_each_point_where_its_value_is():
    logs = [("a", [dict(epoch=1, train_loss=1.0, val_top1=10.0), dict(epoch=2, train_loss=0.0, val_top1=20.0)])]
    array = np.asarray(curves_image(logs, panel=(400, 300)))
    red, green, blue = (int(COLOURS[0][i:i + 2], 16) for i in (1, 3, 5))
    ys, xs = np.nonzero((array[..., 0] == red) & (array[..., 1] == green) & (array[..., 2] == blue))
    loss = xs < 400
    # falling loss: its left end is high, its right end low (plot box: x 60..380, y 30..260)
    left, right = ys[loss][xs[loss] < 80], ys[loss][(xs[loss] > 360) & (ys[loss] < 280)]
    assert left.min() < 40 and right.max() > 250


def test_a_run_without_its_log_stops_the_report_before_anything_is_written(tmp_path):
    write_run(tmp_path / "a", "ssf")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text(
        (tmp_path / "a" / "results.json").read_text().replace('"ssf"', '"linear"'))
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "rep")]) == 2
    assert not (tmp_path / "rep").exists()


def test_two_runs_for_one_cell_are_refused_not_one_silently_dropped(tmp_path, capsys):
    write_run(tmp_path / "a", "ssf")
    write_run(tmp_path / "b", "ssf")
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'a'} and {tmp_path / 'b'} are both ssf on m / digits" in err
    assert "Traceback" not in err

"""The real-ViT reproduction's protocol, on fake run folders: the grid is scored on val200 only,
every seed retrains for the chosen epochs, Table 6 waits for SSF's lr, tasks finish in order,
and claims are worded from the seed spread."""
import json
import statistics
import sys
from pathlib import Path

import pytest

from scaleshift.config import make_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vit_repro  # noqa: E402

FULL = vit_repro.PRESETS["full"]


def finish(runs: Path, name: str, val_top1: float = 0.0, epoch: int = 1, top1: float = 0.0,
           epoch_seconds: float = 1.0, cache_seconds: float | None = None) -> None:
    """A results.json as the engine writes it, with the fields the runner reads."""
    out = runs / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(dict(
        selected=dict(epoch=epoch, val_top1=val_top1), final=dict(top1=top1), reported=dict(top1=top1),
        trainable_params=1000, total_params=10_000, wall_time_s=1.0, train_seconds_per_epoch=epoch_seconds,
        prefix_cache=None if cache_seconds is None else dict(seconds=cache_seconds),
        config=dict(out_dir=str(out), seed=int(name.rsplit("seed", 1)[-1]) if "seed" in name else 0))))


def settle(runs: Path, task: str, key: str = "ssf", epoch: int = 3) -> dict:
    """Finish the method's grid, growth included, so that the base grid's highest lr wins and the
    lr above it scores less (a bracketed choice); the choice."""
    base = vit_repro.grid_points(FULL, key)
    for i, q in enumerate(base):
        finish(runs, f"a/{task}/{key}/grid_{vit_repro.point_label(q)}", val_top1=70.0 + i, epoch=epoch)
    for q in vit_repro.grid(runs, FULL, task, key)[len(base):]:
        finish(runs, f"a/{task}/{key}/grid_{vit_repro.point_label(q)}", val_top1=60.0, epoch=epoch)
    return vit_repro.choice(runs, FULL, "a", task, key, vit_repro.grid(runs, FULL, task, key))


def test_grid_runs_never_see_test_data_and_the_best_val_point_wins(tmp_path):
    points = vit_repro.grid_points(FULL, "vpt_deep")
    assert len(points) == len(vit_repro.LRS["vpt_deep"]) * len(vit_repro.PROMPTS)
    runs = vit_repro.selection_runs(FULL, "a", "struct_count_96", "vpt_deep", points)
    assert all(r["test_split"] is None and r["train_split"] == "train800" and r["val_split"] == "val200"
               and r["seed"] == 0 for r in runs.values())
    assert vit_repro.choice(tmp_path, FULL, "a", "struct_count_96", "vpt_deep", points) is None
    scores = [50.0, 61.0, 61.0, 40.0]          # a tie: the earlier grid point wins
    for (name, _), score, epoch in zip(runs.items(), scores, [4, 2, 3, 1]):
        finish(tmp_path, name, val_top1=score, epoch=epoch)
    chosen = vit_repro.choice(tmp_path, FULL, "a", "struct_count_96", "vpt_deep", points)
    assert (chosen["lr"], chosen["prompts"], chosen["epoch"]) == (points[1]["lr"], points[1]["prompts"], 2)
    assert [q["val_top1"] for q in chosen["grid"]] == scores
    retrain = vit_repro.retrain_runs(FULL, "a", "struct_count_96", "vpt_deep", chosen, FULL["seeds"])
    assert len(retrain) == 3 and all(
        r["train_split"] == "train800val200" and r["val_split"] is None and r["stop_epoch"] == 2
        and r["method_options"]["prompts"] == points[1]["prompts"] and r["lr"] == points[1]["lr"]
        for r in retrain.values())
    assert sorted(r["seed"] for r in retrain.values()) == [0, 1, 2]


def test_ablations_wait_for_ssfs_choice_and_train_ssf_with_their_options(tmp_path):
    task = FULL["ablation_task"]
    planned = vit_repro.plan(FULL, tmp_path)
    assert not any(name.startswith("d/") for name in planned)
    ssf_points = vit_repro.grid_points(FULL, "ssf")
    settle(tmp_path, task)
    planned = vit_repro.plan(FULL, tmp_path)
    ablations = {n: r for n, r in planned.items() if n.startswith("d/")}
    assert len(ablations) == len([row for row in vit_repro.ABLATIONS if row[0] in FULL["ablations"]]) \
        + len(FULL["last_k"])
    layers = {r["method_options"].get("layers") for r in ablations.values()}
    assert {f"last:{k}" for k in FULL["last_k"]} <= layers
    for overrides in ablations.values():   # every planned run is a configuration the engine takes
        make_config({**vit_repro.BASE, **overrides})
    assert all(r["method"] == "ssf" and r["lr"] == ssf_points[-1]["lr"] for r in ablations.values())
    no_scale = next(r for n, r in ablations.items() if "wo_scale" in n)
    assert no_scale["method_options"] == {"scale": False}


def test_one_task_is_finished_before_the_next_starts():
    todo = {"a/t1/ssf/x": 1, "a/t2/ssf/x": 2, "a/t1/full/x": 3, "d/t1/ssf_y/x": 4}
    assert vit_repro.first_stage(FULL, todo) == {"a/t1/ssf/x": 1, "a/t1/full/x": 3}
    assert vit_repro.first_stage(FULL, {"d/t1/ssf_y/x": 4}) == {"d/t1/ssf_y/x": 4}
    assert vit_repro.first_stage(FULL, {}) == {}


@pytest.mark.parametrize("a, b, word", [
    ([70.0, 71.0, 72.0], [60.0, 61.0, 62.0], "held"),
    ([70.0, 71.0, 72.0], [70.5, 71.0, 71.5], "level"),
    ([60.0, 61.0, 62.0], [70.0, 71.0, 72.0], "not held"),
    ([70.0], [69.9], "held"),
])
def test_claims_are_worded_from_the_seed_spread(a, b, word):
    assert vit_repro.verdict(a, b).startswith(word + " (")


def test_finished_runs_are_recorded_so_a_fresh_clone_resumes_and_retrains_only_weights(tmp_path, monkeypatch):
    runs, records = tmp_path / "runs", tmp_path / "out" / "runs"
    monkeypatch.setattr(vit_repro, "RECORDS", records)
    task = FULL["ablation_task"]
    chosen = settle(runs, task, epoch=2)
    points = vit_repro.grid(runs, FULL, task, "ssf")
    names = list(vit_repro.selection_runs(FULL, "a", task, "ssf", points))
    assert all(vit_repro.result(runs, n)["selected"]["epoch"] == 2 for n in names)
    assert all((records / f"{n}.json").is_file() for n in names)
    finish(runs, names[0], val_top1=1.0, epoch=1)     # retrained elsewhere: the record still wins
    assert vit_repro.result(runs, names[0])["selected"]["epoch"] == 2
    for name in vit_repro.retrain_runs(FULL, "a", task, "ssf", chosen, FULL["seeds"]):
        finish(runs, name, top1=70.0)
        vit_repro.result(runs, name)
    planned_before = vit_repro.plan(FULL, runs)
    fresh = tmp_path / "fresh_clone_runs"       # the run directories are gone, the records stay
    assert vit_repro.plan(FULL, fresh) == planned_before
    assert all(vit_repro.result(fresh, n) is not None for n in names)
    assert vit_repro.choice(fresh, FULL, "a", task, "ssf", points) == chosen
    # only (c) and the figures need weights: the recorded seed runs of their task are retrained
    out = tmp_path / "out"
    rebuild = vit_repro.weights_needed(FULL, fresh, {"a", "c"}, out)
    assert sorted(rebuild) == sorted(vit_repro.retrain_runs(FULL, "a", task, "ssf", chosen, FULL["seeds"]))
    assert vit_repro.weights_needed(FULL, runs, {"a", "c"}, out) == {}
    assert vit_repro.weights_needed(FULL, fresh, {"a"}, out) == {}
    # (c)'s errors kept beside the tables: a fresh clone needs no weights for them
    from scaleshift.data.builtin import FASHION_C_SPLITS
    errors = {f"ssf/{seed}/{split}": 0.5 for seed in FULL["seeds"] for split in FASHION_C_SPLITS}
    vit_repro.robustness_errors_file(FULL, out).parent.mkdir(parents=True, exist_ok=True)
    vit_repro.robustness_errors_file(FULL, out).write_text(json.dumps(errors))
    assert vit_repro.weights_needed(FULL, fresh, {"a", "c"}, out) == {}


def test_on_the_ablation_task_ssf_then_the_pareto_rows_come_first_then_the_rest_of_table6(tmp_path):
    task = FULL["ablation_task"]
    planned = vit_repro.plan(FULL, tmp_path)
    assert vit_repro.stage_of(FULL, next(iter(planned))) == f"a/{task}/ssf"
    assert set(vit_repro.first_stage(FULL, planned)) == set(
        vit_repro.selection_runs(FULL, "a", task, "ssf", vit_repro.grid_points(FULL, "ssf")))
    settle(tmp_path, task)
    stages = list(dict.fromkeys(vit_repro.stage_of(FULL, n) for n in vit_repro.plan(FULL, tmp_path)))
    assert stages[:5] == [f"a/{task}/ssf", f"d/{task}/pareto", f"t/{task}", f"a/{task}", f"d/{task}"]
    pareto = [n for n in vit_repro.plan(FULL, tmp_path) if vit_repro.stage_of(FULL, n) == f"d/{task}/pareto"]
    assert {n.split("/")[2] for n in pareto} == {
        vit_repro.ablation_key(label) for table, label, _ in vit_repro.ablation_settings(FULL) if table in ("6a", "6e")}


def test_timing_rounds_run_every_pareto_setting_alone_and_each_round_is_its_own_reference(tmp_path, monkeypatch):
    """The Pareto table's seconds come from rounds that time every setting minutes apart, each
    divided by its own round's all-blocks time; an unfinished round counts for nothing."""
    monkeypatch.setattr(vit_repro, "RECORDS", None)
    task = FULL["ablation_task"]
    assert vit_repro.timing_runs(FULL, tmp_path, task) == {}          # waits for SSF's lr
    settle(tmp_path, task)
    runs = vit_repro.timing_runs(FULL, tmp_path, task)
    rounds = FULL["timing_rounds"]
    assert len(runs) == rounds * len(vit_repro.pareto_settings(FULL)) == rounds * (1 + 3 + len(FULL["last_k"]))
    for overrides in runs.values():
        cfg = make_config({**vit_repro.BASE, **overrides})
        assert cfg.val_split is None and cfg.test_split is None and cfg.train_split == "train800val200"
    orders = [[n.split("/")[2] for n in runs if n.endswith(f"round{r}")] for r in range(rounds)]
    assert all(sorted(order) == sorted(orders[0]) for order in orders) and len({tuple(o) for o in orders}) > 1
    # round 0 on a fast day, round 1 four times slower, round 2 unfinished
    for name in runs:
        round_index, key = int(name[-1]), name.split("/")[2]
        if round_index == 2 and key != "ssf_all_blocks":
            continue
        finish(tmp_path, name, epoch_seconds=(10.0 if key == "ssf_all_blocks" else 2.0) * (4 if round_index else 1),
               cache_seconds=4.0 * (4 if round_index else 1) if "last" in key else None)
    times = vit_repro.timing(FULL, tmp_path, task)
    assert times["all blocks"]["ratio"] == [1.0, 1.0]
    assert times["6e last 2 blocks"]["ratio"] == [0.2, 0.2]
    assert times["6e last 2 blocks"]["cache_seconds"] == [4.0, 16.0] and times["6a first 2 blocks"]["cache_seconds"] == [0.0, 0.0]
    data = {"all blocks": dict(top1=[80.0, 80.0], timing=times["all blocks"]),
            "6e last 2 blocks": dict(top1=[79.5, 79.3], timing=times["6e last 2 blocks"]),
            "6a first 2 blocks": dict(top1=[70.0, 71.0], timing=times["6a first 2 blocks"])}
    lines = vit_repro.pareto(data, 4, tmp_path / "pareto.png")
    row = next(line for line in lines if line.startswith("| 6e last 2 blocks"))
    # 99.25% of the accuracy at 0.2x per epoch; a 4-epoch run: (4 + 4 * 2) / (4 * 10) in either round
    assert row.split(" | ")[1:] == ["0.993", "0.20", "0.30", "yes |"]
    assert next(line for line in lines if line.startswith("| 6a first 2 blocks")).endswith("| no |")
    assert (tmp_path / "pareto.png").stat().st_size > 0


def test_table6_claims_compare_each_backbone_with_ssf_on_its_ablation_task():
    """EfficientNet-Lite0's Table 6 rows ran on one task: they are held against SSF on that task,
    not against SSF's mean over the suite (which is a different number of other tasks)."""
    lite0 = json.loads(vit_repro.LITE0.read_text())
    ssf = lite0["data"]["a"]["results"]["ssf"]["per_task"][lite0["settings"]["ablation_task"]]
    no_scale = lite0["data"]["d"]["w/o scale"]
    row = next(line for line in vit_repro.claims(dict(a={}, d={})) if line.startswith("| 6d: the scale matters"))
    assert row.split(" | ")[2].endswith(f"({statistics.mean(ssf):.1f} vs {statistics.mean(no_scale):.1f})")


def test_the_grid_grows_past_an_edge_winner_until_the_choice_is_bracketed(tmp_path, monkeypatch):
    monkeypatch.setattr(vit_repro, "RECORDS", None)
    task = "elpv_defect_96"
    base = vit_repro.grid_points(FULL, "ssf")
    assert vit_repro.grid(tmp_path, FULL, task, "ssf") == base          # pending: nothing to grow
    low, high = sorted(q["lr"] for q in base)
    finish(tmp_path, f"a/{task}/ssf/grid_lr{low:g}", val_top1=56.0, epoch=1)   # the lowest lr wins
    finish(tmp_path, f"a/{task}/ssf/grid_lr{high:g}", val_top1=53.5, epoch=4)
    grown = vit_repro.grid(tmp_path, FULL, task, "ssf")
    assert grown == base + [dict(lr=low / 4)]
    assert f"a/{task}/ssf/grid_lr{low / 4:g}" in vit_repro.plan(FULL, tmp_path)
    assert vit_repro.choice(tmp_path, FULL, "a", task, "ssf", grown) is None   # no retraining yet
    finish(tmp_path, f"a/{task}/ssf/grid_lr{low / 4:g}", val_top1=70.0, epoch=4)   # a new edge wins
    assert vit_repro.grid(tmp_path, FULL, task, "ssf") == base + [dict(lr=low / 4), dict(lr=low / 16)]
    finish(tmp_path, f"a/{task}/ssf/grid_lr{low / 16:g}", val_top1=65.0, epoch=4)
    assert vit_repro.choice(tmp_path, FULL, "a", task, "ssf", vit_repro.grid(tmp_path, FULL, task, "ssf"))["lr"] == low / 4
    # VPT grows at every prompt count; a middle winner stops the growth
    vpt = vit_repro.grid_points(FULL, "vpt_deep")
    for q in vpt:
        finish(tmp_path, f"a/{task}/vpt_deep/grid_{vit_repro.point_label(q)}", val_top1=q["lr"] * 1000 + q["prompts"])
    top = max(q["lr"] for q in vpt)
    assert vit_repro.grid(tmp_path, FULL, task, "vpt_deep") == vpt + [dict(lr=top * 4, prompts=n) for n in vit_repro.PROMPTS]
    for n in vit_repro.PROMPTS:
        finish(tmp_path, f"a/{task}/vpt_deep/grid_lr{top * 4:g}_p{n}", val_top1=1.0)
    assert len(vit_repro.grid(tmp_path, FULL, task, "vpt_deep")) == len(vpt) + len(vit_repro.PROMPTS)
    assert vit_repro.grid(tmp_path, vit_repro.PRESETS["quick"], task, "ssf") == vit_repro.grid_points(vit_repro.PRESETS["quick"], "ssf")

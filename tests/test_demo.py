"""`scaleshift demo` end to end (one epoch per method): real pretrained backbones, merge exact."""
import json

import pytest

from scaleshift.cli import main

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow


def test_demo_on_real_features_merges_exactly(tmp_path, capsys):
    # The default, the real ViT. The other backbones run the same code with their own DEMOS entry.
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["backbone"] == "vit_small_patch14_dinov2"
    assert set(summary["methods"]) == {"linear", "ssf", "full"}
    merge = summary["merge"]
    assert merge["identical_predictions"] and merge["extra_params"] == 0
    assert merge["max_abs_logit_diff"] < 1e-3 and merge["compared_images"] == 1000
    assert (out / "results.png").stat().st_size > 0 and (out / "ssf" / "adapter").is_dir()
    assert "merged" in (out / "results.md").read_text().lower()
    assert summary["command"] == "scaleshift demo --epochs 1"      # what repeats this result
    assert f"`{summary['command']}`" in (out / "results.md").read_text()
    assert summary["machine"]["torch"] and summary["machine"]["cpus"]
    assert "cpu_extensions" in summary["machine"]
    run = json.loads((out / "ssf" / "results.json").read_text())   # built for 56 px, and says so
    assert run["model_identity"]["kwargs"] == {"img_size": 56}


def test_the_cli_offers_exactly_the_demos_there_are():
    from scaleshift.cli import DEMO_BACKBONES
    from scaleshift.demo import DEMO_BACKBONE, DEMOS
    assert DEMO_BACKBONES == list(DEMOS) and DEMO_BACKBONES[0] == DEMO_BACKBONE


def test_demo_refuses_an_unknown_backbone(capsys):
    with pytest.raises(SystemExit) as exit_info:   # argparse's own exit
        main(["demo", "--backbone", "vit_base_patch16_224"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "vit_small_patch14_dinov2" in err and "Traceback" not in err


def test_machine_record_names_the_cpu_extensions_the_kernels_choose_between(tmp_path):
    from scaleshift.runs import cpu_extensions, machine_info
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_extensions(str(cpuinfo)) == ["avx2", "avx512f", "avx512_bf16", "amx_tile"]
    assert cpu_extensions(str(tmp_path / "missing")) == []
    record = machine_info()
    assert record["cpu_capability"] and isinstance(record["cpu_extensions"], list)


def test_demo_refuses_a_run_folder_of_another_demo(tmp_path, capsys):
    # runs/demo of an earlier demo on another backbone: reusing its finished runs would report
    # Lite0's numbers as the ViT's, so the demo stops before training and names the fix
    import yaml
    from scaleshift.config import make_config
    folder = tmp_path / "demo" / "linear"
    folder.mkdir(parents=True)
    lite0 = make_config(dict(model="tf_efficientnet_lite0", method="linear", dataset="patch_textures_zoom_96",
                             train_split="train800", val_split="val200", lr=0.1, epochs=10,
                             out_dir=str(folder)))
    (folder / "config.yaml").write_text(yaml.safe_dump(lite0.to_dict(), sort_keys=False))
    (folder / "results.json").write_text("{}")
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "tf_efficientnet_lite0" in err and "--out" in err
    assert "model" in err and "dataset" in err and "Traceback" not in err
    assert (folder / "results.json").read_text() == "{}"           # untouched


def test_demo_never_writes_into_a_folder_or_file_of_the_users(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.md").write_text("MY NOTES")
    (mine / "results.json").write_text('{"mine": 1}')
    assert main(["demo", "--out", str(mine), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "non-empty folder scaleshift did not write" in err and "Traceback" not in err
    assert sorted(p.name for p in mine.iterdir()) == ["results.json", "results.md"]
    assert (mine / "results.md").read_text() == "MY NOTES"
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file"), "--epochs", "1"]) == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file").read_text() == "x"


def test_a_demo_folder_from_before_the_marker_is_still_the_demos(tmp_path):
    from scaleshift.demo import _written_before_the_marker
    old = tmp_path / "old"
    (old / "ssf").mkdir(parents=True)
    assert not _written_before_the_marker(old)
    (old / "ssf" / "config.yaml").write_text("model: x\n")
    assert _written_before_the_marker(old)
    summary = tmp_path / "summary"
    summary.mkdir()
    (summary / "results.json").write_text(json.dumps(dict(task="t", backbone="b", methods={}, merge={})))
    assert _written_before_the_marker(summary)
    (summary / "results.json").write_text("[1, 2]")
    assert not _written_before_the_marker(summary)

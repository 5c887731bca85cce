"""`scaleshift demo` end to end (one epoch per method): real ImageNet features, merge exact."""
import json

import pytest

from scaleshift.cli import main

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow


def test_demo_on_real_features_merges_exactly(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["backbone"] == "tf_efficientnet_lite0"
    assert set(summary["methods"]) == {"linear", "ssf", "full"}
    merge = summary["merge"]
    assert merge["identical_predictions"] and merge["extra_params"] == 0
    assert merge["max_abs_logit_diff"] < 1e-3 and merge["compared_images"] == 1000
    assert (out / "results.png").stat().st_size > 0 and (out / "ssf" / "adapter").is_dir()
    assert "merged" in (out / "results.md").read_text().lower()
    assert summary["command"] == "scaleshift demo --epochs 1"      # what repeats this result
    assert "`scaleshift demo --epochs 1`" in (out / "results.md").read_text()
    assert summary["machine"]["torch"] and summary["machine"]["cpus"]
    assert "cpu_extensions" in summary["machine"]


def test_demo_refuses_an_unknown_backbone(capsys):
    with pytest.raises(SystemExit) as exit_info:   # argparse's own exit
        main(["demo", "--backbone", "vit_base_patch16_224"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "tf_efficientnet_lite0" in err and "Traceback" not in err


def test_machine_record_names_the_cpu_extensions_the_kernels_choose_between(tmp_path):
    from scaleshift.runs import cpu_extensions, machine_info
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    assert cpu_extensions(str(cpuinfo)) == ["avx2", "avx512f", "avx512_bf16", "amx_tile"]
    assert cpu_extensions(str(tmp_path / "missing")) == []
    record = machine_info()
    assert record["cpu_capability"] and isinstance(record["cpu_extensions"], list)

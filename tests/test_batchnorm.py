"""batchnorm=update|frozen (BatchNorm running statistics during training) and test_limit."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scaleshift.cli import main

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow

# a random-init EfficientNet-Lite0 (BatchNorm everywhere) at 32 px: a few seconds a run
TINY_BN = ["model=tf_efficientnet_lite0", "dataset=digits", "train_split=train800", "val_split=val200",
           "test_split=test", "input_size=32", "batch_size=32", "lr=1e-2", "epochs=1",
           "max_steps_per_epoch=2", "log_every=100", "method=ssf"]


def running_stats(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize("mode", ["update", "frozen"])
def test_batchnorm_statistics_follow_the_option_and_the_adapter_matches(mode, tmp_path):
    out = tmp_path / mode
    assert main(["train", *TINY_BN, f"batchnorm={mode}", f"out_dir={out}"]) == 0
    import scaleshift
    torch.manual_seed(42)
    base = running_stats(scaleshift.create_model("tf_efficientnet_lite0", num_classes=10).state_dict())
    saved = {k.removeprefix("base_layer."): v for k, v in load_file(out / "adapter" / "adapter_model.safetensors").items()}
    saved = {k.replace(".base_layer", ""): v for k, v in running_stats(saved).items()}
    assert saved, "the adapter keeps the BatchNorm running statistics"
    changed = [k for k, v in saved.items() if k in base and not torch.equal(v, base[k])]
    if mode == "frozen":
        assert not changed
    else:
        assert len(changed) > len(saved) // 2
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["batchnorm"] == mode
    # the served model (adapter on the rebuilt backbone) reproduces the reported number
    from scaleshift.runs import evaluate_run
    assert evaluate_run(out)["top1"] == results["reported"]["top1"]


def test_batchnorm_value_is_validated(capsys):
    assert main(["train", *TINY_BN, "batchnorm=fixed", "--validate-only"]) == 2
    err = capsys.readouterr().err
    assert "batchnorm" in err and "update" in err and "frozen" in err and "Traceback" not in err


def test_test_limit_tests_on_the_first_items_only(tmp_path):
    out = tmp_path / "limited"
    assert main(["train", *TINY_BN, "test_limit=37", f"out_dir={out}"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["test_limit"] == 37
    assert any("test_top1" in row for row in log)
    # 37 images: every accuracy is a multiple of 100/37
    top1 = results["reported"]["top1"]
    assert abs(top1 * 37 / 100 - round(top1 * 37 / 100)) < 1e-6
    from scaleshift.runs import evaluate_run   # eval reports the run's number: on the same 37
    again = evaluate_run(out)
    assert again["count"] == 37 and again["top1"] == top1
    assert evaluate_run(out, split="val200")["count"] == 200        # a split named: all of it
    assert evaluate_run(out, split="test")["count"] > 37
    assert main(["train", *TINY_BN, "test_limit=0", "--validate-only"]) == 2

"""The committed parameter table is what the code computes today, and every row matches."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_params_table_is_current_and_matches_the_paper():
    spec = importlib.util.spec_from_file_location("params_table", ROOT / "benchmarks" / "params_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    assert (ROOT / "docs" / "params.md").read_text() == text, \
        "docs/params.md is stale: run python benchmarks/params_table.py"
    assert "| NO |" not in text


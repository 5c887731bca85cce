"""The committed parameter table is what the code computes today, and every row matches."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_params_table_is_current_and_matches_the_paper():
    spec = importlib.util.spec_from_file_location("params_table", ROOT / "benchmarks" / "params_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    assert (ROOT / "docs" / "params.md").read_text() == text, \
        "docs/params.md is stale: run python benchmarks/params_table.py"
    assert "| NO |" not in text



def test_readme_bench_table_is_generated_from_the_committed_bench_results():
    spec = importlib.util.spec_from_file_location("bench_readme", ROOT / "benchmarks" / "bench_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (ROOT / "README.md").read_text()
    generated = module.table({title: module.load(folder) for title, folder in module.BENCHES.items()})
    assert module.render_readme(text, generated) == text, \
        "README.md's bench table is stale: run python benchmarks/bench_readme.py"
    assert "SSF training step time / bias" in generated

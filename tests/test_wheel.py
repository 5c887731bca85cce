"""Acceptance of issue 15, item 4 and issue 22, item 1: a wheel built from the committed tree,
installed in a fresh venv with the base install only (the core requirements' closure reached
through a .pth, no optional package importable, the source tree off sys.path), lists every
recipe and trains every `builtin/*` recipe from a directory outside the repository,
`builtin/digits_ssf` to at least 3x chance in one epoch. A few minutes;
benchmarks/wheel_check.py does the work and prints every command. `pip wheel` builds in
isolation, so it needs setuptools from the wheel cache or PyPI, as `make` does."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs a git checkout (the check builds `git archive HEAD`)")
def test_installed_wheel_lists_recipes_and_trains(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wheel_check.py"),
                           "--work", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert re.search(r"all \d+ recipes of the repository are listed", proc.stdout)
    assert "wheel check passed" in proc.stdout
    assert "none of the 16 optional packages imports" in proc.stdout
    for name in ("digits_ssf", "digits_linear", "digits_full"):
        assert (tmp_path / "runs" / "builtin" / name / "results.json").is_file()

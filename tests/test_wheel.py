"""Acceptance of issue 15, item 4: a wheel built from the committed tree, installed in a fresh
venv (dependencies reached through a .pth, the source tree off sys.path), lists every recipe
and trains `builtin/digits_ssf epochs=1` from a directory outside the repository. About a
minute; benchmarks/wheel_check.py does the work and prints every command. `pip wheel` builds
in isolation, so it needs setuptools from the wheel cache or PyPI, as `make` does."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs a git checkout (the check builds `git archive HEAD`)")
def test_installed_wheel_lists_recipes_and_trains(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wheel_check.py"),
                           "--work", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert re.search(r"all \d+ recipes of the repository are listed", proc.stdout)
    assert "wheel check passed" in proc.stdout
    assert (tmp_path / "run" / "results.json").is_file()

"""The installed package works without the repository (issue 15, item 4, acceptance):

    python benchmarks/wheel_check.py            # about 1-2 minutes; prints every command and its output

1. `pip wheel . --no-deps -w DIR` on the committed tree (git archive HEAD, so nothing that is
   only in the working copy can help);
2. a fresh venv, the wheel installed with --no-deps, and a .pth file pointing at the running
   interpreter's site-packages so torch, timm, ... are found without a download (that
   site-packages may hold an editable scaleshift, but a .pth-added folder's own .pth files are
   not read, and the venv's site-packages comes first);
3. from a directory outside the repository, with PYTHONPATH removed: `scaleshift` resolves into
   the venv, `scaleshift list recipes` prints every recipe of the repository, and
   `scaleshift train builtin/digits_ssf epochs=1` runs to its results.json.
Exit code 0 when all of it holds.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], cwd: Path, env: dict | None = None, tail: int = 12) -> str:
    print(f"$ (cd {cwd} && {shlex.join(map(str, argv))})", flush=True)
    started = time.time()
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True)
    output = (proc.stdout + proc.stderr).strip()
    lines = output.splitlines()
    shown = lines if len(lines) <= tail else [f"... ({len(lines) - tail} lines)", *lines[-tail:]]
    print("\n".join(f"  {line}" for line in shown))
    print(f"  [exit {proc.returncode}, {time.time() - started:.1f} s]", flush=True)
    if proc.returncode:
        raise SystemExit(f"failed: {shlex.join(map(str, argv))}")
    return proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deps", default=sysconfig.get_paths()["purelib"],
                        help="site-packages holding the dependencies (default: this interpreter's)")
    parser.add_argument("--work", default=None, help="working directory (default: a new temp dir)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="scaleshift-wheel-"))
    work.mkdir(parents=True, exist_ok=True)
    tree, wheels, venv, elsewhere = (work / n for n in ("tree", "wheels", "venv", "elsewhere"))
    for folder in (tree, elsewhere):
        folder.mkdir(exist_ok=True)

    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    print(f"committed tree of {ROOT} (git archive HEAD) in {tree}")
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", wheels], cwd=tree)
    wheel = next(wheels.glob("scaleshift-*.whl"))
    run([sys.executable, "-m", "venv", venv], cwd=work)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print("
                                "sysconfig.get_paths()['purelib'])"], capture_output=True,
                               text=True, check=True).stdout.strip())
    (site / "scaleshift_wheel_check_deps.pth").write_text(args.deps + "\n")
    print(f"{site / 'scaleshift_wheel_check_deps.pth'}: {args.deps}")
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", wheel], cwd=work)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run([venv / "bin" / "python", "-c", "import sys, scaleshift; print(scaleshift.__file__); "
                 "print([p for p in sys.path if 'wt-eco' in p or p.endswith('/src')])"],
                cwd=elsewhere, env=env)
    location = Path(where.splitlines()[0])
    assert location.is_relative_to(venv), f"scaleshift came from {location}, not the venv"
    assert where.splitlines()[1] == "[]", "a source tree is on sys.path"

    listed = run([venv / "bin" / "scaleshift", "list", "recipes"], cwd=elsewhere, env=env, tail=60)
    repository = sorted(str(p.relative_to(ROOT / "src" / "scaleshift" / "recipes").with_suffix(""))
                        for p in (ROOT / "src" / "scaleshift" / "recipes").rglob("*.yaml"))
    assert listed.split() == repository, "the wheel's recipes differ from the repository's"
    print(f"  all {len(repository)} recipes of the repository are listed")

    out = work / "run"
    run([venv / "bin" / "scaleshift", "train", "builtin/digits_ssf", "epochs=1", f"out_dir={out}"],
        cwd=elsewhere, env=env, tail=8)
    assert (out / "results.json").is_file()
    print(f"wheel check passed: {wheel.name}, {len(repository)} recipes, one epoch trained ({out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

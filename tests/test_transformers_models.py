"""Hugging Face transformers image classifiers (issue 15, item 2): the head is found and trained,
SSF goes to the paper's insertion points under transformers' module names, every method that
applies merges exactly back into the plain transformers class, and what is not supported is
refused with a message. Tiny random configs, built locally (nothing is downloaded)."""
import copy
import json
import sys

import pytest
import torch

import scaleshift
from scaleshift.adapter_files import adapter_tensors
from scaleshift.merge import merge_state, perturb_trainable
from scaleshift.methods import get_method
from scaleshift.methods.ssf import ScaleShift
from scaleshift.models import build_model, identity_of, plain_model
from scaleshift.profiles import input_size_of

tf = pytest.importorskip("transformers")

IMAGE = dict(image_size=32, num_labels=5)
VIT = dict(patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=64, **IMAGE)
CONFIGS = {   # ConvNeXt's layer scale starts at 1 so that its blocks change the logits
    "vit": (tf.ViTForImageClassification, tf.ViTConfig(**VIT)),
    "deit": (tf.DeiTForImageClassification, tf.DeiTConfig(**VIT)),
    "dinov2": (tf.Dinov2ForImageClassification, tf.Dinov2Config(mlp_ratio=2, **{
        k: v for k, v in VIT.items() if k != "intermediate_size"})),
    "dinov2_swiglu": (tf.Dinov2ForImageClassification, tf.Dinov2Config(
        mlp_ratio=2, use_swiglu_ffn=True, **{k: v for k, v in VIT.items() if k != "intermediate_size"})),
    "swin": (tf.SwinForImageClassification, tf.SwinConfig(
        patch_size=4, embed_dim=8, depths=[1, 2], num_heads=[1, 2], window_size=4, **IMAGE)),
    "convnext": (tf.ConvNextForImageClassification, tf.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 2], layer_scale_init_value=1.0, **IMAGE)),
}
LORA_TARGETS = {"convnext": "pwconv1,pwconv2", "dinov2_swiglu": "q_proj,v_proj,up_proj"}


def build(family: str, seed: int = 0):
    model_class, config = CONFIGS[family]
    torch.manual_seed(seed)
    return model_class(copy.deepcopy(config)).eval()


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def ssf_points(family: str) -> set[str]:
    """The official SSF insertion points written out under transformers' names."""
    config = CONFIGS[family][1]
    attn = [f"attention.{p}_proj" for p in "qkvo"]
    if family in ("vit", "deit"):
        blocks = [f"{family}.layers.{i}" for i in range(config.num_hidden_layers)]
        inner = ["layernorm_before", *attn, "layernorm_after", "mlp.fc1", "mlp.fc2"]
        outer = [f"{family}.embeddings.patch_embeddings.projection", f"{family}.layernorm"]
    elif family.startswith("dinov2"):
        blocks = [f"dinov2.encoder.layer.{i}" for i in range(config.num_hidden_layers)]
        mlp = ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] if config.use_swiglu_ffn \
            else ["mlp.fc1", "mlp.fc2"]
        inner = ["norm1", *attn, "norm2", *mlp]
        outer = ["dinov2.embeddings.patch_embeddings.projection", "dinov2.layernorm"]
    elif family == "swin":   # no SSF on the patch merging, as in the official code
        blocks = [f"swin.encoder.layers.{s}.blocks.{b}" for s, depth in enumerate(config.depths)
                  for b in range(depth)]
        inner = ["layernorm_before", *attn, "layernorm_after", "mlp.fc1", "mlp.fc2"]
        outer = ["swin.embeddings.patch_embeddings.projection", "swin.embeddings.norm",
                 "swin.layernorm"]
    else:   # convnext: nothing on the downsampling; the pooled layernorm is timm's head.norm
        blocks = [f"convnext.encoder.stages.{s}.layers.{b}" for s, depth in enumerate(config.depths)
                  for b in range(depth)]
        inner = ["dwconv", "layernorm", "pwconv1", "pwconv2"]
        outer = ["convnext.embeddings.patch_embeddings", "convnext.embeddings.layernorm",
                 "convnext.layernorm"]
    return {f"{b}.{n}" for b in blocks for n in inner} | set(outer)


@pytest.mark.slow
def test_ssf_on_a_tiny_vit_trains_its_head_and_merges_into_the_plain_model():
    model = build("vit")
    scaleshift.apply(model, "ssf")
    config = model.config
    d, hidden, k = config.hidden_size, config.intermediate_size, config.num_labels
    per_block = 2 * (d + 3 * d + d + d + hidden + d)   # norm1, q/k/v, out, norm2, fc1, fc2
    expected = 2 * d + config.num_hidden_layers * per_block + 2 * d + (d * k + k)
    assert model.classifier.weight.requires_grad and model.classifier.bias.requires_grad
    assert not isinstance(model.classifier, ScaleShift)
    assert scaleshift.trainable_parameters(model) == expected
    assert {n.rpartition(".")[0] for n, p in model.named_parameters()
            if p.requires_grad and "ssf_" in n} == ssf_points("vit")

    x, labels = images(), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        before = model(x).logits
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    torch.nn.functional.cross_entropy(model(x).logits, labels).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model(x).logits
    assert (after - before).abs().max() > 1e-3

    merged = scaleshift.merge(model)
    fresh = tf.ViTForImageClassification(tf.ViTConfig(**VIT)).eval()
    fresh.load_state_dict(merged.state_dict(), strict=True)
    assert type(merged) is tf.ViTForImageClassification
    assert scaleshift.total_parameters(merged) == scaleshift.total_parameters(fresh)
    with torch.no_grad():
        assert (fresh(x).logits - after).abs().max() < 1e-5


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("method", ["ssf", "bias", "linear", "full", "lora"])
def test_every_family_and_method_merges_exactly(family, method):
    """Random non-identity method parameters; the merged state dict loads strictly into a fresh
    plain model of the same config and gives the unmerged model's logits, computed literally."""
    model = build(family)
    options = {"targets": LORA_TARGETS.get(family, "q_proj,v_proj,fc1")} if method == "lora" else {}
    scaleshift.apply(model, method, **options)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    if method == "ssf":
        assert {n.rpartition(".")[0] for n in trainable if "ssf_" in n} == ssf_points(family)
        if family == "convnext":   # timm's head.norm trains in SSF mode (paper counts)
            assert {"convnext.layernorm.base_layer.weight", "convnext.layernorm.base_layer.bias"} <= trainable
    perturb_trainable(model)
    x = images()
    with torch.no_grad(), get_method(method).explicit_reference(model):
        reference = model(x).logits
    fresh = build(family, seed=1)
    fresh.load_state_dict(scaleshift.merge(model).state_dict(), strict=True)
    with torch.no_grad():
        output = fresh(x).logits
    assert (output - reference).abs().max() < 1e-5
    assert (output - build(family)(x).logits).abs().max() > 1e-3   # the method changed something


def test_pure_merge_of_saved_adapter_files_and_load_adapter(tmp_path):
    plain = build("vit")
    base_state = {k: v.clone() for k, v in plain.state_dict().items()}
    model = scaleshift.apply(copy.deepcopy(plain), "ssf")
    perturb_trainable(model)
    x = images()
    with torch.no_grad():
        expected = model(x).logits
    scaleshift.save_adapter(model, tmp_path / "adapter")
    meta, tensors = adapter_tensors(tmp_path / "adapter")
    assert meta["num_classes"] == 5
    assert meta["base_model"]["library"] == "transformers"
    assert meta["base_model"]["architecture"] == "ViTForImageClassification"

    state, not_folded = merge_state(meta["method"], base_state, tensors, meta["options"])
    assert not_folded == []
    fresh = build("vit", seed=1)
    fresh.load_state_dict(state, strict=True)
    loaded = scaleshift.load_adapter(copy.deepcopy(plain), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert (fresh(x).logits - expected).abs().max() < 1e-5
        assert (loaded(x).logits - expected).abs().max() < 1e-6
    other = build("vit", seed=2)   # same config, other weights
    with pytest.raises(scaleshift.ScaleshiftError, match="fingerprint"):
        scaleshift.load_adapter(other, tmp_path / "adapter")


def test_identity_rebuilds_the_plain_transformers_model(monkeypatch):
    model = build("swin")
    identity = json.loads(json.dumps(identity_of(model).as_dict()))   # as an adapter file holds it
    plain = plain_model(identity)
    assert type(plain) is tf.SwinForImageClassification
    assert plain.config.to_dict() == model.config.to_dict()
    assert plain_model(identity, 3).config.num_labels == 3
    assert input_size_of(model) == (3, 32, 32)
    with pytest.raises(scaleshift.ScaleshiftError, match=r"from_pretrained"):
        build_model(identity)   # its weights are transformers' business
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(scaleshift.ScaleshiftError, match=r"pip install 'scaleshift\[transformers\]'"):
        plain_model(identity)


@pytest.mark.parametrize("model_class, config", [
    (tf.DeiTForImageClassificationWithTeacher, tf.DeiTConfig(**VIT)),   # two heads
    (tf.BeitForImageClassification, tf.BeitConfig(**VIT)),
], ids=["deit-with-teacher", "beit"])
def test_an_unverified_transformers_class_is_refused(model_class, config):
    model = model_class(config)
    with pytest.raises(scaleshift.ScaleshiftError, match=r"does not support(.|\n)*"
                       r"ViTForImageClassification, DeiTForImageClassification"):
        scaleshift.apply(model, "ssf")
    assert scaleshift.trainable_parameters(model) == scaleshift.total_parameters(model)   # untouched


@pytest.mark.parametrize("family, method, options, message", [
    ("vit", "adapter", {}, r"works on timm models only(.|\n)*'ssf', 'linear', 'full', 'bias', 'lora'"),
    ("vit", "vpt_deep", {}, "works on timm models only"),
    ("vit", "lora", {}, r"no Linear/Conv2d named \['qkv'\](.|\n)*'q_proj'"),   # timm's default names
    ("convnext", "ssf", {"convnext_final": "residual"}, "use convnext_final=head_norm"),
])
def test_what_does_not_apply_to_a_transformers_model_says_what_to_do(family, method, options, message):
    with pytest.raises(scaleshift.ScaleshiftError, match=message):
        scaleshift.apply(build(family), method, **options)


def test_train_refuses_a_transformers_model_name():
    from scaleshift.cli import main
    with pytest.raises(scaleshift.ScaleshiftError, match="Python API only"):
        scaleshift.create_model("google/vit-base-patch16-224", 10)
    assert main(["train", "builtin/digits_ssf", "model=google/vit-base-patch16-224",
                 "--validate-only"]) == 2


def test_a_record_naming_no_transformers_model_class_is_refused():
    identity = dict(identity_of(build("vit")), architecture="AutoConfig")
    with pytest.raises(scaleshift.ScaleshiftError, match="has no model class 'AutoConfig'"):
        plain_model(identity)


def trainer_for(model, output_dir, **args):
    """The Hugging Face Trainer on 8 random images, 2 steps, CPU, nothing reported."""
    pytest.importorskip("accelerate")
    data = [{"pixel_values": x, "labels": i % 5} for i, x in enumerate(images(8, seed=3))]
    arguments = tf.TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=4,
                                     num_train_epochs=1, learning_rate=0.05, use_cpu=True,
                                     report_to=[], logging_strategy="no", **args)
    return tf.Trainer(model=model, args=arguments, train_dataset=data)


@pytest.mark.slow
def test_trainer_save_model_writes_the_merged_model_that_from_pretrained_loads(tmp_path):
    model = build("vit")
    scaleshift.apply(model, "ssf")
    trainer = trainer_for(model, tmp_path / "out", save_strategy="no")
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    model.eval()
    with torch.no_grad():
        expected = model(images()).logits
    loaded, info = tf.ViTForImageClassification.from_pretrained(tmp_path / "saved",
                                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not any(".base_layer." in k or k.endswith((".scale", ".shift")) for k in loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images()).logits, expected, atol=1e-5, rtol=1e-5)
    # trained, not the backbone's initial head: the round trip cannot pass on untouched weights
    assert not torch.allclose(expected, build("vit")(images()).logits, atol=1e-3)
    # the state dict a Trainer passes under FSDP / DeepSpeed (the wrapped keys) merges the same way
    model.save_pretrained(tmp_path / "given", state_dict=model.state_dict())
    again = tf.ViTForImageClassification.from_pretrained(tmp_path / "given").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(images()).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_loading_a_merged_checkpoint_back_into_the_training_model_is_refused(tmp_path):
    model = build("vit")
    scaleshift.apply(model, "ssf")
    trainer_for(model, tmp_path / "out", save_strategy="steps", save_steps=1).train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert (checkpoint / "config.json").is_file()
    fresh = build("vit")
    scaleshift.apply(fresh, "ssf")
    with pytest.raises(scaleshift.ScaleshiftError, match="merged plain model"):
        trainer_for(fresh, tmp_path / "out").train(resume_from_checkpoint=str(checkpoint))

"""create_model: timm names, local weight files through timm's loader, clear errors offline."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import scaleshift

VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)


def _source(num_classes=10):
    torch.manual_seed(3)
    return scaleshift.create_model("vit_tiny_patch16_224", num_classes=num_classes, **VIT)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_and_a_new_head_is_made(tmp_path, suffix):
    source = _source()
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    same = scaleshift.create_model("vit_tiny_patch16_224", 10, pretrained=str(path), **VIT)
    for key, value in state.items():
        assert torch.equal(same.state_dict()[key], value), key
    other_head = scaleshift.create_model("vit_tiny_patch16_224", 3, pretrained=path, **VIT)
    assert other_head.head.weight.shape == (3, 32)
    assert torch.equal(other_head.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_npz_goes_through_timm_big_vision_reader(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, unrelated=np.zeros(3))
    # routed to timm's JAX/Flax .npz reader (custom_load), which finds no ViT arrays here
    with pytest.raises(ValueError, match="JAX/Flax"):
        scaleshift.create_model("vit_tiny_patch16_224", 10, pretrained=path, **VIT)


def test_missing_and_unsupported_files_are_clear(tmp_path):
    with pytest.raises(scaleshift.ScaleshiftError, match="not found"):
        scaleshift.create_model("vit_tiny_patch16_224", 10, pretrained=tmp_path / "nope.pth")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(scaleshift.ScaleshiftError, match="unsupported weights file"):
        scaleshift.create_model("vit_tiny_patch16_224", 10, pretrained=tmp_path / "w.txt")


def test_weights_of_another_model_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _source().state_dict().items()}, str(path))
    with pytest.raises(scaleshift.ScaleshiftError, match="do not fit"):
        scaleshift.create_model("vit_tiny_patch16_224", 10, pretrained=path,
                                **dict(VIT, embed_dim=64))


def test_hub_download_offline_says_to_pass_a_local_file(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")     # read by huggingface_hub once, at its import:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)   # so set it here too
    with pytest.raises(scaleshift.ScaleshiftError, match="local file"):
        scaleshift.create_model("vit_tiny_patch16_224", 10, pretrained=True)


def test_unknown_model_name():
    with pytest.raises(scaleshift.ScaleshiftError, match="unknown model"):
        scaleshift.create_model("vit_gigantic_imaginary", 10)

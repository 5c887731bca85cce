"""Tiny configs of each model family, so the method x backbone matrix runs in seconds."""
import os

import pytest
import torch

# `make test` runs two pytest workers on two cores: one thread each (and in the processes they
# spawn), or every small op of one worker waits on the other worker's busy threads
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from timm.models import register_model
from timm.models.mlp_mixer import _create_mixer

import scaleshift


@register_model
def mixer_test_tiny(pretrained=False, **kwargs):
    """A 2-block MLP-Mixer at 32x32 (timm's own mixer factories do not take size overrides)."""
    args = dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=32)
    return _create_mixer("mixer_s16_224", pretrained=pretrained, **dict(args, **kwargs))

# family -> (timm name, constructor kwargs, input size)
TINY = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=32,
                                         num_heads=2), (3, 32, 32)),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=2, window_size=4,
                                                  embed_dim=16, depths=(2, 2), num_heads=(1, 2)),
             (3, 32, 32)),
    "convnext": ("convnext_atto", dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), conv_mlp=False),
                 (3, 32, 32)),
    "mixer": ("mixer_test_tiny", {}, (3, 32, 32)),
    "as_mlp": ("as_mlp_test", {}, (3, 64, 64)),
}
NUM_CLASSES = 5


def make_model(family: str, num_classes: int = NUM_CLASSES, seed: int = 0):
    name, kwargs, _ = TINY[family]
    torch.manual_seed(seed)
    return scaleshift.create_model(name, num_classes=num_classes, **kwargs)


def make_input(family: str, batch: int = 2, seed: int = 1):
    return torch.randn(batch, *TINY[family][2], generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield

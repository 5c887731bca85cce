"""scaleshift's own pretrained backbones, shipped with the package (weights/*.safetensors).

Each entry gives the timm architecture (name + kwargs) they are an instance of, the weights file
(backbone only: no classifier), its sha256, and the provenance: the exact `scaleshift pretrain`
command, seed and upstream data. They load through the same local-weights path as any timm
checkpoint:

    model = scaleshift.create_model("scaleshift_vit32", num_classes=10, pretrained=True)
    scaleshift.apply(model, "ssf")                     # a plain timm model with a new head

Inputs: 32x32 RGB, scaled to [0, 1] then normalised with mean = std = 0.5 (the returned model's
pretrained_cfg says so, so scaleshift.data.build_transform picks it up).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ScaleshiftError
from ..io import file_sha256

WEIGHTS_DIR = Path(__file__).parent / "weights"
DATA_CFG = dict(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0,
                interpolation="bicubic")
UPSTREAM = ("fashion-mnist TRAIN images without labels (test images and train images identical "
            "to one excluded; scaleshift.data.builtin.fashion_pretrain_indices), built-in IFS "
            "fractals (pretrain_fractal train split, labels unused), procedural dead leaves "
            "(scaleshift.pretrain.dead_leaves); no downstream evaluation image")

EMBEDDED = {
    "scaleshift_vit32": dict(
        timm_name="vit_tiny_patch16_224",
        # the head reads the mean of the normed patch tokens: a linear head on the cls token
        # alone learned far less from the same backbone (digits 16% vs 85% for the probe)
        kwargs=dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4,
                    global_pool="avg", fc_norm=False),
        file="scaleshift_vit32.safetensors",
        sha256="7a24096faf84250bbfbe42b8c1ef7c78e1e2c27be60a5f09164e0491d810b2b6",
        command="scaleshift pretrain --arch vit --steps 2000 --batch-size 96 --lr 1.5e-3 "
                "--seed 0 --threads 2 --out runs/pretrain/vit2000 --ckpt-every 100 --log-every 50",
        seed=0,
        data=UPSTREAM,
        notes="SimCLR NT-Xent (t=0.2) + rotation prediction (same rotation for both views), "
              "AdamW lr 1.5e-3 wd 0.05, cosine, 2000 steps x 96 images "
              "(192,000 images, about 25 min on 2 CPU threads)",
    ),
    "scaleshift_convnext32": dict(
        timm_name="convnext_atto",
        kwargs=dict(dims=(32, 64, 128, 256), depths=(2, 2, 4, 2), patch_size=2, conv_mlp=False),
        file="scaleshift_convnext32.safetensors",
        sha256="03e5abf45cc779af4b4d16d1cf06ccdc489a034b2e58c60afe19ede90562515e",
        command="scaleshift pretrain --arch convnext --steps 200 --batch-size 96 --lr 1.5e-3 "
                "--seed 0 --out runs/pretrain/convnext200 --ckpt-every 25 --log-every 10",
        seed=0,
        data=UPSTREAM,
        notes="SimCLR NT-Xent (t=0.2) + rotation prediction (same rotation for both views), "
              "AdamW lr 1.5e-3 wd 0.05, cosine, 200 steps x 96 images "
              "(19,200 images, 2.5 min on 2 CPU threads)",
    ),
}


def embedded_names() -> list[str]:
    return list(EMBEDDED)


def embedded_path(name: str) -> Path:
    """The verified weights file of an embedded backbone."""
    if name not in EMBEDDED:
        raise ScaleshiftError(f"unknown embedded backbone {name!r}; one of "
                              f"{', '.join(EMBEDDED)}")
    spec = EMBEDDED[name]
    path = WEIGHTS_DIR / spec["file"]
    if not path.is_file():
        raise ScaleshiftError(f"weights of {name!r} missing: {path}. Reinstall scaleshift or "
                              f"regenerate them with: {spec['command']}")
    digest = file_sha256(path)
    if digest != spec["sha256"]:
        raise ScaleshiftError(f"weights of {name!r} at {path} have sha256 {digest}, expected "
                              f"{spec['sha256']}: the file is corrupt or was replaced. Restore "
                              f"it (git checkout) or regenerate it with: {spec['command']}")
    return path

"""Patch tasks on the real photographs bundled with scikit-image (no download needed).

patch_textures   which texture a 32x32 patch shows: brick, grass, gravel, moon surface
                 (in the spirit of VTAB dtd, natural group)
patch_photos     which photograph a 32x32 patch comes from: astronaut, camera, coffee,
                 chelsea, rocket, coins, clock, hubble_deep_field (natural group)
patch_medical    which specialised image a 32x32 patch comes from: immunohistochemistry
                 (stained tissue), retina (fundus photo), cell (microscopy)
                 (in the spirit of VTAB patch_camelyon / diabetic_retinopathy, specialized)
faces            face or non-face: 20x20 crops of scikit-image's lfw_subset (100 faces,
                 100 non-faces); the source images are split 65 / 10 / 25 per class into
                 train / val / test pools, so no test crop shares a source image with training.

Each source image is cut into a 4x4 grid of blocks; per image a fixed draw assigns 10 blocks to
train, 2 to validation and 4 to test, and a patch always lies inside one block: train, val and
test patches come from disjoint regions. Near-constant patches (std < 4 grey levels; e.g. the
black border of the retina photo) are redrawn. Splits follow builtin.protocol_items
(train800 / val200 from the seeded train / val streams, test fixed).
"""
from __future__ import annotations

from functools import partial

import numpy as np
from PIL import Image

from ..extras import require
from .base import DatasetSpec, Generated
from .builtin import (TEST_SEED, PROTOCOL_ALIASES, PROTOCOL_SPLITS, PROTOCOL_TEXT,
                      check_num_classes, protocol_items)

PATCH = 32
GRID = 4
BLOCKS = dict(test=4, val=2)          # of GRID*GRID blocks; the rest are train blocks
SIZES = dict(train=10000, val=2000, test=2000)
STREAMS = ("train", "val", "test")

PATCH_TASKS = {   # name: (scikit-image images, long side they are resized to (None: native))
    "patch_textures": (("brick", "grass", "gravel", "moon"), None),
    "patch_photos": (("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "clock",
                      "hubble_deep_field"), 256),
    "patch_medical": (("immunohistochemistry", "retina", "cell"), 256),
}
_TASK_CODES = {name: 20 + i for i, name in enumerate(list(PATCH_TASKS) + ["faces"])}


def load_skimage(name: str, long_side: int | None) -> np.ndarray:
    """A scikit-image sample image as uint8 RGB, optionally resized to `long_side`."""
    samples = require("skimage.data", "the scikit-image photograph tasks")
    array = np.asarray(getattr(samples, name)())
    if array.dtype != np.uint8:
        array = np.uint8(np.round(255 * (array.astype(np.float64) / max(array.max(), 1e-12))))
    image = Image.fromarray(array).convert("RGB")
    if long_side is not None:
        scale = long_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.BICUBIC)
    return np.asarray(image)


class PatchSource:
    def __init__(self, task: str, seed: int):
        names, long_side = PATCH_TASKS[task]
        self.code, self.seed = _TASK_CODES[task], seed
        self.images = [load_skimage(name, long_side) for name in names]
        self.blocks = [self._assign_blocks(k, image) for k, image in enumerate(self.images)]

    def _assign_blocks(self, k: int, image: np.ndarray) -> dict[str, list[tuple]]:
        rows = np.linspace(0, image.shape[0], GRID + 1).astype(int)
        cols = np.linspace(0, image.shape[1], GRID + 1).astype(int)
        boxes = [(rows[r], rows[r + 1], cols[c], cols[c + 1])
                 for r in range(GRID) for c in range(GRID)]
        assert min(min(b - a, d - c) for a, b, c, d in boxes) >= PATCH
        order = np.random.default_rng([TEST_SEED, self.code, k]).permutation(len(boxes))
        test, val = BLOCKS["test"], BLOCKS["val"]
        return dict(test=[boxes[j] for j in order[:test]],
                    val=[boxes[j] for j in order[test:test + val]],
                    train=[boxes[j] for j in order[test + val:]])

    def labels(self, stream: str) -> np.ndarray:
        return np.arange(SIZES[stream]) % len(self.images)

    def image(self, stream: str, i: int) -> Image.Image:
        k = i % len(self.images)
        seed = TEST_SEED if stream == "test" else self.seed
        rng = np.random.default_rng([seed, self.code, STREAMS.index(stream), i])
        for _ in range(10):
            top, bottom, left, right = self.blocks[k][stream][rng.integers(len(
                self.blocks[k][stream]))]
            y = int(rng.integers(top, bottom - PATCH + 1))
            x = int(rng.integers(left, right - PATCH + 1))
            patch = self.images[k][y:y + PATCH, x:x + PATCH]
            if patch.std() >= 4:
                break
        return Image.fromarray(np.ascontiguousarray(patch), "RGB")


FACE_CROP = 20
FACE_POOLS = dict(train=65, val=10, test=25)        # source images per class
FACE_SIZES = dict(train=2000, val=400, test=1000)


class FaceSource:
    def __init__(self, seed: int):
        # (200, 25, 25) floats: 100 faces, 100 not
        images = require("skimage.data", "the faces task").lfw_subset()
        self.images = np.uint8(np.round(255 * np.clip(images, 0, 1)))
        self.code, self.seed = _TASK_CODES["faces"], seed
        self.pools = {}
        for label, first in ((1, 0), (0, 100)):      # label 1 = face
            order = first + np.random.default_rng([TEST_SEED, self.code, label]).permutation(100)
            a, b = FACE_POOLS["train"], FACE_POOLS["train"] + FACE_POOLS["val"]
            self.pools[label] = dict(train=order[:a], val=order[a:b], test=order[b:])

    def labels(self, stream: str) -> np.ndarray:
        return np.arange(FACE_SIZES[stream]) % 2

    def image(self, stream: str, i: int) -> Image.Image:
        seed = TEST_SEED if stream == "test" else self.seed
        rng = np.random.default_rng([seed, self.code, STREAMS.index(stream), i])
        pool = self.pools[i % 2][stream]
        source = self.images[pool[rng.integers(len(pool))]]
        y, x = rng.integers(0, source.shape[0] - FACE_CROP + 1, 2)
        crop = source[y:y + FACE_CROP, x:x + FACE_CROP]
        return Image.fromarray(np.ascontiguousarray(crop), "L").convert("RGB")


def build_patch_task(task, root=None, split="train", *, seed=0, num_classes=None,
                     strict=False):
    names = PATCH_TASKS[task][0]
    check_num_classes(task, num_classes, len(names))
    return Generated(PatchSource(task, seed), protocol_items(split, SIZES), len(names), names)


def build_faces(root=None, split="train", *, seed=0, num_classes=None, strict=False):
    check_num_classes("faces", num_classes, 2)
    return Generated(FaceSource(seed), protocol_items(split, FACE_SIZES), 2,
                     ("non-face", "face"))


def _layout(images, long_side) -> str:
    size = "native size" if long_side is None else f"resized to long side {long_side}"
    return (f"built in: scikit-image sample images {', '.join(images)} ({size});\n"
            f"32x32 patches from disjoint 4x4-grid blocks (10 train / 2 val / 4 test)\n"
            + PROTOCOL_TEXT)


SPECS = [
    DatasetSpec(task, len(images), PROTOCOL_SPLITS, _layout(images, long_side), "builtin",
                partial(build_patch_task, task), needs_root=False,
                description={"patch_textures": "texture patches (like VTAB dtd)",
                             "patch_photos": "which photo a patch is from (VTAB natural)",
                             "patch_medical": "which medical image a patch is from "
                                              "(VTAB specialized)"}[task],
                split_aliases=PROTOCOL_ALIASES)
    for task, (images, long_side) in PATCH_TASKS.items()
] + [
    DatasetSpec("faces", 2, PROTOCOL_SPLITS,
                "built in: scikit-image lfw_subset (100 faces, 100 non-faces, 25x25); 20x20 "
                "crops;\nsource images split 65/10/25 per class into train/val/test pools\n"
                + PROTOCOL_TEXT, "builtin", build_faces, needs_root=False,
                description="face vs non-face crops (lfw_subset)",
                split_aliases=PROTOCOL_ALIASES),
]

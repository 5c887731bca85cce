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

from functools import lru_cache, partial

import numpy as np
from PIL import Image

from ..extras import require
from .base import DatasetSpec, Generated
from .builtin import (TEST_SEED, HIRES, PROTOCOL_ALIASES, PROTOCOL_SPLITS, PROTOCOL_TEXT,
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

TEXTURES = ("brick", "grass", "gravel", "moon")
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "clock",
          "hubble_deep_field", "china", "flower")
MEDICAL = ("immunohistochemistry", "retina", "cell")
ZOOMS = (0.625, 0.875, 1.25)          # the _zoom tasks: native crop = size * zoom


def hires_patch_tasks(size: int = HIRES) -> dict[str, dict]:
    """The patch tasks drawn at `size` px (registered with the suffix _{HIRES}). Sources are
    scaled so that a patch covers the same part of a photograph at any size; at 96 px the
    textures are used at their native 512 px."""
    texture_side = None if size == 96 else round(512 * size / 96)
    return {
        # the 32 px task at 96 px: 4 textures, a 96 px crop of the 512 px texture
        f"patch_textures_{HIRES}": dict(images=TEXTURES, long_side=texture_side, grid=GRID,
                                        crops=(size,), size=size, code=40),
        # finer-grained: texture x zoom (crop 0.625 / 0.875 / 1.25 of the output size, resized
        # to it): 12 classes that differ in the scale of the same texture
        f"patch_textures_zoom_{HIRES}": dict(images=TEXTURES, long_side=texture_side, grid=GRID,
                                             crops=tuple(round(size * z) for z in ZOOMS),
                                             size=size, code=41),
        # which of 10 photographs (long side 8 x size: a patch covers 1/8 of it, as at 32 px)
        f"patch_photos_{HIRES}": dict(images=PHOTOS, long_side=8 * size, grid=GRID,
                                      crops=(size,), size=size, code=42),
        # finer-grained: the same photographs, a patch covers 1/16 of the long side
        f"patch_photos_fine_{HIRES}": dict(images=PHOTOS, long_side=8 * size, grid=GRID,
                                           crops=(size // 2,), size=size, code=43),
        f"patch_medical_{HIRES}": dict(images=MEDICAL, long_side=8 * size, grid=GRID,
                                       crops=(size,), size=size, code=44),
        # finer-grained: medical image x magnification (like classifying the magnification of a
        # histology slide): 9 classes
        f"patch_medical_zoom_{HIRES}": dict(images=MEDICAL, long_side=8 * size, grid=GRID,
                                            crops=tuple(round(size * z) for z in ZOOMS),
                                            size=size, code=45),
    }


HIRES_PATCH_TASKS = hires_patch_tasks(HIRES)


def patch_config(task: str) -> dict:
    """What a patch task draws: source images, long side, grid, native crop sizes (one per
    zoom class), output size, random-stream code. Zoom classes: label = image * zooms + zoom."""
    if task in PATCH_TASKS:
        names, long_side = PATCH_TASKS[task]
        return dict(images=names, long_side=long_side, grid=GRID, crops=(PATCH,), size=PATCH,
                    code=_TASK_CODES[task])
    return HIRES_PATCH_TASKS[task]


SKLEARN_PHOTOS = ("china", "flower")     # scikit-learn's two bundled sample photographs


@lru_cache(maxsize=32)
def load_skimage(name: str, long_side: int | None) -> np.ndarray:
    """A scikit-image sample image (or scikit-learn's china / flower photo) as uint8 RGB,
    optionally resized to `long_side`."""
    if name in SKLEARN_PHOTOS:
        load_sample_image = require("sklearn.datasets", "the photograph tasks").load_sample_image
        array = np.asarray(load_sample_image(f"{name}.jpg"))
    else:
        samples = require("skimage.data", "the scikit-image photograph tasks")
        array = np.asarray(getattr(samples, name)())
    if array.dtype != np.uint8:
        array = np.uint8(np.round(255 * (array.astype(np.float64) / max(array.max(), 1e-12))))
    image = Image.fromarray(array).convert("RGB")
    if long_side is not None:
        scale = long_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.BICUBIC)
    array = np.asarray(image)
    array.flags.writeable = False          # cached: shared by every source of the process
    return array


class PatchSource:
    def __init__(self, task: str, seed: int, config: dict | None = None):
        cfg = patch_config(task) if config is None else config
        self.code, self.seed = cfg["code"], seed
        self.grid, self.crops, self.size = cfg["grid"], tuple(cfg["crops"]), cfg["size"]
        self.images = [load_skimage(name, cfg["long_side"]) for name in cfg["images"]]
        self.num_classes = len(self.images) * len(self.crops)
        self.blocks = [self._assign_blocks(k, image) for k, image in enumerate(self.images)]

    def _assign_blocks(self, k: int, image: np.ndarray) -> dict[str, list[tuple]]:
        grid = self.grid
        rows = np.linspace(0, image.shape[0], grid + 1).astype(int)
        cols = np.linspace(0, image.shape[1], grid + 1).astype(int)
        boxes = [(rows[r], rows[r + 1], cols[c], cols[c + 1])
                 for r in range(grid) for c in range(grid)]
        assert min(min(b - a, d - c) for a, b, c, d in boxes) >= max(self.crops)
        order = np.random.default_rng([TEST_SEED, self.code, k]).permutation(len(boxes))
        test, val = BLOCKS["test"], BLOCKS["val"]
        return dict(test=[boxes[j] for j in order[:test]],
                    val=[boxes[j] for j in order[test:test + val]],
                    train=[boxes[j] for j in order[test + val:]])

    def labels(self, stream: str) -> np.ndarray:
        return np.arange(SIZES[stream]) % self.num_classes

    def image(self, stream: str, i: int) -> Image.Image:
        k, zoom = divmod(i % self.num_classes, len(self.crops))
        crop = self.crops[zoom]
        seed = TEST_SEED if stream == "test" else self.seed
        rng = np.random.default_rng([seed, self.code, STREAMS.index(stream), i])
        for _ in range(10):
            top, bottom, left, right = self.blocks[k][stream][rng.integers(len(
                self.blocks[k][stream]))]
            y = int(rng.integers(top, bottom - crop + 1))
            x = int(rng.integers(left, right - crop + 1))
            patch = self.images[k][y:y + crop, x:x + crop]
            if patch.std() >= 4:
                break
        image = Image.fromarray(np.ascontiguousarray(patch), "RGB")
        if crop != self.size:
            image = image.resize((self.size, self.size), Image.BICUBIC)
        return image


FACE_CROP = 20
FACE_POOLS = dict(train=65, val=10, test=25)        # source images per class
FACE_SIZES = dict(train=2000, val=400, test=1000)


class FaceSource:
    def __init__(self, seed: int, size: int | None = None):
        # (200, 25, 25) floats: 100 faces, 100 not
        images = require("skimage.data", "the faces task").lfw_subset()
        self.images = np.uint8(np.round(255 * np.clip(images, 0, 1)))
        self.code, self.seed, self.size = _TASK_CODES["faces"], seed, size
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
        image = Image.fromarray(np.ascontiguousarray(crop), "L").convert("RGB")
        if self.size is not None:      # the same crops, shown at `size` px
            image = image.resize((self.size, self.size), Image.BICUBIC)
        return image


def build_patch_task(task, root=None, split="train", *, seed=0, num_classes=None,
                     strict=False):
    names = PATCH_TASKS[task][0]
    check_num_classes(task, num_classes, len(names))
    return Generated(PatchSource(task, seed), protocol_items(split, SIZES), len(names), names)


def class_names(cfg: dict) -> list[str]:
    if len(cfg["crops"]) == 1:
        return list(cfg["images"])
    return [f"{name}@{crop}px" for name in cfg["images"] for crop in cfg["crops"]]


def build_hires_patch_task(task, root=None, split="train", *, seed=0, num_classes=None,
                           strict=False, size=HIRES):
    """A patch task of hires_patch_tasks(); `size` != 96 draws the same task at another
    resolution (for resolution pilots)."""
    cfg = hires_patch_tasks(size)[task]
    source = PatchSource(task, seed, cfg)
    check_num_classes(task, num_classes, source.num_classes)
    return Generated(source, protocol_items(split, SIZES), source.num_classes, class_names(cfg),
                     meta=dict(size=size, crops=list(cfg["crops"])))


def build_faces(root=None, split="train", *, seed=0, num_classes=None, strict=False,
                size=None):
    check_num_classes("faces", num_classes, 2)
    return Generated(FaceSource(seed, size), protocol_items(split, FACE_SIZES), 2,
                     ("non-face", "face"))


def _layout(images, long_side) -> str:
    size = "native size" if long_side is None else f"resized to long side {long_side}"
    return (f"built in: scikit-image sample images {', '.join(images)} ({size});\n"
            f"32x32 patches from disjoint 4x4-grid blocks (10 train / 2 val / 4 test)\n"
            + PROTOCOL_TEXT)


def _extras(images) -> tuple[str, ...]:
    """The optional modules drawing these images imports (scikit-learn's photos, scikit-image's)."""
    return tuple(m for m, used in (("sklearn", any(i in SKLEARN_PHOTOS for i in images)),
                                   ("skimage", any(i not in SKLEARN_PHOTOS for i in images))) if used)


SPECS = [
    DatasetSpec(task, len(images), PROTOCOL_SPLITS, _layout(images, long_side), "builtin",
                partial(build_patch_task, task), needs_root=False,
                description={"patch_textures": "texture patches (like VTAB dtd)",
                             "patch_photos": "which photo a patch is from (VTAB natural)",
                             "patch_medical": "which medical image a patch is from "
                                              "(VTAB specialized)"}[task],
                split_aliases=PROTOCOL_ALIASES, extras=_extras(images))
    for task, (images, long_side) in PATCH_TASKS.items()
] + [
    DatasetSpec("faces", 2, PROTOCOL_SPLITS,
                "built in: scikit-image lfw_subset (100 faces, 100 non-faces, 25x25); 20x20 "
                "crops;\nsource images split 65/10/25 per class into train/val/test pools\n"
                + PROTOCOL_TEXT, "builtin", build_faces, needs_root=False,
                description="face vs non-face crops (lfw_subset)",
                split_aliases=PROTOCOL_ALIASES, extras=("skimage",)),
]


def _hires_layout(cfg) -> str:
    size = "native size" if cfg["long_side"] is None else f"resized to long side {cfg['long_side']}"
    crops = "/".join(str(c) for c in cfg["crops"])
    return (f"built in: sample images {', '.join(cfg['images'])} ({size});\n"
            f"{crops} px crops shown at {cfg['size']}x{cfg['size']}, from disjoint "
            f"{cfg['grid']}x{cfg['grid']}-grid blocks (10 train / 2 val / 4 test)\n"
            + PROTOCOL_TEXT)


_HIRES_WHAT = {
    f"patch_textures_{HIRES}": f"texture patches at {HIRES} px",
    f"patch_textures_zoom_{HIRES}": f"texture x zoom (fine-grained, 12 classes) at {HIRES} px",
    f"patch_photos_{HIRES}": f"which of 10 photos a patch is from, at {HIRES} px",
    f"patch_photos_fine_{HIRES}": f"which of 10 photos a small patch is from, at {HIRES} px",
    f"patch_medical_{HIRES}": f"which medical image a patch is from, at {HIRES} px",
    f"patch_medical_zoom_{HIRES}": f"medical image x magnification (fine-grained, 9 classes) at "
                                   f"{HIRES} px",
}
SPECS += [
    DatasetSpec(task, len(class_names(cfg)), PROTOCOL_SPLITS, _hires_layout(cfg), "builtin",
                partial(build_hires_patch_task, task), needs_root=False,
                description=_HIRES_WHAT[task], split_aliases=PROTOCOL_ALIASES,
                extras=_extras(cfg["images"]))
    for task, cfg in HIRES_PATCH_TASKS.items()
] + [
    DatasetSpec(f"faces_{HIRES}", 2, PROTOCOL_SPLITS,
                f"the faces task (same crops and splits) shown at {HIRES}x{HIRES}\n"
                + PROTOCOL_TEXT, "builtin", partial(build_faces, size=HIRES), needs_root=False,
                description=f"face vs non-face crops (lfw_subset) at {HIRES} px",
                split_aliases=PROTOCOL_ALIASES, extras=("skimage",)),
]

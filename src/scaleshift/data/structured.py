"""Structured tasks in the spirit of VTAB's structured group, rendered procedurally (64x64 RGB).

struct_location     one object; label = which cell of a 4x4 grid holds its centre
                    (16 classes, like dsprites_loc)
struct_orientation  one asymmetric object (an arrow, or a fashion item) rotated by an angle;
                    label = 16 bins of 22.5 degrees over the full turn (like dsprites_ori)
struct_count        1..8 objects in distinct cells of a 4x4 grid; label = count - 1
                    (8 classes, like clevr_count)
struct_distance     1..3 objects standing on a ground plane seen in perspective (far objects
                    are smaller and nearer the horizon); label = depth bin of the nearest
                    object, 6 bins with edges 8**(j/6) (like clevr_dist / kitti)

Objects are `sprites="shapes"` (default; circle, square, triangle, star, cross in random
colours) or `sprites="fashion"`: held-out real images, the fashion-mnist TEST items (never in
any pretraining set), tinted; items 0..4,999 make the train / val images and items
5,000..9,999 the test images, so train and test never share a sprite. Every image is drawn
from its own random stream (seed, task, split, index): identical in every process.
"""
from __future__ import annotations

import colorsys
from functools import lru_cache, partial

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ScaleshiftError
from .base import DatasetSpec, Generated
from .builtin import (TEST_SEED, HIRES, PROTOCOL_ALIASES, PROTOCOL_SPLITS, PROTOCOL_TEXT,
                      check_num_classes, load_fashion_mnist, protocol_items)

CANVAS = 64
CELL = CANVAS // 4
SIZES = dict(train=20000, test=5000)
STRUCT_TASKS = {"struct_location": 16, "struct_orientation": 16, "struct_count": 8,
                "struct_distance": 6}
_TASK_CODES = {name: 30 + i for i, name in enumerate(STRUCT_TASKS)}
SHAPES = ("circle", "square", "triangle", "star", "cross")
DEPTH_EDGES = 8.0 ** (np.arange(7) / 6)          # 1 .. 8, equal ratios between bins
HORIZON = 16


@lru_cache(maxsize=None)
def shape_mask(shape: str) -> Image.Image:
    """A 64x64 'L' mask of a shape, drawn once and resized per object."""
    size = 64
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    c, r = size / 2, size / 2 - 2
    if shape == "circle":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif shape == "square":
        draw.rectangle([c - r * 0.8, c - r * 0.8, c + r * 0.8, c + r * 0.8], fill=255)
    elif shape == "triangle":
        draw.polygon([(c, c - r), (c + r * 0.9, c + r * 0.75), (c - r * 0.9, c + r * 0.75)],
                     fill=255)
    elif shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        draw.polygon([(c + q * np.cos(a), c - q * np.sin(a)) for q, a in zip(radii, angles)],
                     fill=255)
    elif shape == "cross":
        w = r * 0.35
        draw.rectangle([c - w, c - r, c + w, c + r], fill=255)
        draw.rectangle([c - r, c - w, c + r, c + w], fill=255)
    elif shape == "arrow":      # points up; no rotational symmetry
        draw.polygon([(c, c - r), (c + r * 0.6, c - r * 0.1), (c + r * 0.22, c - r * 0.1),
                      (c + r * 0.22, c + r), (c - r * 0.22, c + r), (c - r * 0.22, c - r * 0.1),
                      (c - r * 0.6, c - r * 0.1)], fill=255)
    else:
        raise ValueError(shape)
    return img


def _colour(rng) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.75, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


class StructuredSource:
    def __init__(self, task: str, seed: int, sprites: str = "shapes", root=None,
                 canvas: int = CANVAS):
        if sprites not in ("shapes", "fashion"):
            raise ScaleshiftError(f"sprites must be 'shapes' or 'fashion', got {sprites!r}")
        self.task, self.seed, self.sprites = task, seed, sprites
        # other canvas sizes draw from their own random streams
        self.code = _TASK_CODES[task] + (0 if canvas == CANVAS else 10 * int(canvas))
        # geometry is written for a 64 px canvas and scaled by k (k = 1: the original tasks)
        self.canvas, self.k = int(canvas), canvas / CANVAS
        self.cell, self.horizon = self.canvas / 4, HORIZON * self.k
        self.num_classes = STRUCT_TASKS[task]
        self.fashion = load_fashion_mnist("test", root)[0] if sprites == "fashion" else None
        self._labels: dict[str, np.ndarray] = {}

    def _rng(self, stream: str, i: int, part: int) -> np.random.Generator:
        seed = TEST_SEED if stream == "test" else self.seed
        return np.random.default_rng([seed, self.code, ("train", "test").index(stream), part, i])

    def labels(self, stream: str) -> np.ndarray:
        if stream not in self._labels:
            self._labels[stream] = self._rng(stream, 0, 0).integers(0, self.num_classes,
                                                                    SIZES[stream])
        return self._labels[stream]

    # -- drawing --------------------------------------------------------------------------
    def _sprite(self, rng, stream: str, shape: str | None = None) -> Image.Image:
        if self.fashion is None:
            return shape_mask(shape or SHAPES[rng.integers(len(SHAPES))])
        half = len(self.fashion) // 2                       # train/val: first half, test: rest
        index = rng.integers(half) + (half if stream == "test" else 0)
        item = self.fashion[index].astype(np.float64)
        return Image.fromarray(np.uint8(np.clip(item * 1.6, 0, 255)), "L")

    @staticmethod
    def _paste(canvas: Image.Image, mask: Image.Image, colour, cx, cy, size, angle=0.0):
        size = max(2, int(round(size)))
        mask = mask.resize((size, size), Image.BILINEAR)
        if angle:
            mask = mask.rotate(angle, resample=Image.BILINEAR, expand=True)
        x, y = int(round(cx - mask.width / 2)), int(round(cy - mask.height / 2))
        canvas.paste(Image.new("RGB", mask.size, colour), (x, y), mask)

    def _background(self, rng, ground: bool = False) -> Image.Image:
        base = rng.integers(0, 70, 3)
        side = self.canvas
        pixels = np.broadcast_to(base, (side, side, 3)).astype(np.float64)
        if ground:          # lighter ground below the horizon, darkening towards it
            ramp = np.clip((np.arange(side) - self.horizon) / (side - self.horizon), 0, 1)
            pixels = pixels + (ramp[:, None, None] * rng.uniform(40, 90, 3))
        pixels = pixels + rng.normal(0, 6, pixels.shape)
        return Image.fromarray(np.uint8(np.clip(pixels, 0, 255)), "RGB")

    def image(self, stream: str, i: int) -> Image.Image:
        label = int(self.labels(stream)[i])
        rng = self._rng(stream, i, 1)
        draw = getattr(self, "_" + self.task.removeprefix("struct_"))
        return draw(rng, stream, label)

    def _location(self, rng, stream, label):
        canvas = self._background(rng)
        row, col = divmod(label, 4)
        cell = self.cell
        cx, cy = (col + rng.uniform(0.15, 0.85)) * cell, (row + rng.uniform(0.15, 0.85)) * cell
        self._paste(canvas, self._sprite(rng, stream), _colour(rng), cx, cy,
                    rng.uniform(9, 15) * self.k, rng.uniform(0, 360))
        return canvas

    def _orientation(self, rng, stream, label):
        canvas = self._background(rng)
        angle = (label + rng.uniform(0.05, 0.95)) * 360 / self.num_classes
        centre = self.canvas / 2 + rng.uniform(-6, 6, 2) * self.k
        self._paste(canvas, self._sprite(rng, stream, "arrow"), _colour(rng), *centre,
                    rng.uniform(30, 42) * self.k, angle)
        return canvas

    def _count(self, rng, stream, label):
        canvas = self._background(rng)
        for cell in rng.choice(16, size=label + 1, replace=False):
            row, col = divmod(int(cell), 4)
            size = rng.uniform(8, 13) * self.k
            cell = self.cell
            slack = (cell - size) / 2
            cx = col * cell + cell / 2 + rng.uniform(-slack, slack)
            cy = row * cell + cell / 2 + rng.uniform(-slack, slack)
            self._paste(canvas, self._sprite(rng, stream), _colour(rng), cx, cy, size,
                        rng.uniform(0, 360))
        return canvas

    def _distance(self, rng, stream, label):
        canvas = self._background(rng, ground=True)
        nearest = np.exp(rng.uniform(np.log(DEPTH_EDGES[label]), np.log(DEPTH_EDGES[label + 1])))
        depths = [nearest] + list(np.exp(rng.uniform(np.log(nearest), np.log(DEPTH_EDGES[-1]),
                                                     int(rng.integers(0, 3)))))
        for z in sorted(depths, reverse=True):                   # far to near
            size = 24.0 * self.k / z
            bottom = self.horizon + (self.canvas - self.horizon) / z   # where it meets the ground
            cx = rng.uniform(size / 2, self.canvas - size / 2)
            self._paste(canvas, self._sprite(rng, stream), _colour(rng), cx, bottom - size / 2,
                        size)
        return canvas


def build_structured(task, root=None, split="train", *, seed=0, sprites="shapes",
                     num_classes=None, strict=False, canvas=CANVAS):
    check_num_classes(task, num_classes, STRUCT_TASKS[task])
    source = StructuredSource(task, seed, sprites, root, canvas=canvas)
    return Generated(source, protocol_items(split, SIZES), STRUCT_TASKS[task],
                     meta=dict(sprites=sprites, **({} if canvas == CANVAS else
                                                   dict(canvas=int(canvas)))))


_WHAT = {"struct_location": "grid cell (4x4) of one object's centre",
         "struct_orientation": "rotation of one object, 16 bins of 22.5 degrees",
         "struct_count": "number of objects, 1..8",
         "struct_distance": "depth bin of the nearest object on a ground plane, 6 bins"}

SPECS = [
    DatasetSpec(task, classes, PROTOCOL_SPLITS,
                f"built in: procedural {CANVAS}x{CANVAS} scenes; label = {_WHAT[task]};\n"
                f"option sprites=shapes (default) or sprites=fashion (fashion-mnist test items; "
                f"root as for fashion_mnist)\n" + PROTOCOL_TEXT,
                "builtin", partial(build_structured, task), needs_root=False,
                description=f"structured: {_WHAT[task]}", split_aliases=PROTOCOL_ALIASES)
    for task, classes in STRUCT_TASKS.items()
] + [
    DatasetSpec(f"{task}_{HIRES}", classes, PROTOCOL_SPLITS,
                f"built in: procedural scenes drawn at {HIRES}x{HIRES} (the {CANVAS} px scene "
                f"geometry scaled; its own random streams); label = {_WHAT[task]};\n"
                f"option sprites=shapes (default) or sprites=fashion\n" + PROTOCOL_TEXT,
                "builtin", partial(build_structured, task, canvas=HIRES), needs_root=False,
                description=f"structured at {HIRES} px: {_WHAT[task]}",
                split_aliases=PROTOCOL_ALIASES)
    for task, classes in STRUCT_TASKS.items()
]

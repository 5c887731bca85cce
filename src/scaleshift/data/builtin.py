"""Built-in offline datasets from real files on this machine, deterministic from a seed.

fashion_mnist        Fashion-MNIST, 10 classes, 60,000 train / 10,000 test real 28x28 images,
                     read from Debian's dataset-fashion-mnist package
                     (/usr/share/datasets/fashion-mnist/*-idx?-ubyte.gz) or a torchvision root
                     (<root>/FashionMNIST/raw/) or any folder holding the four idx files.
digits               1,797 real 8x8 handwritten digits (UCI optdigits test set, CC BY 4.0),
                     shipped in this package as digits.csv.gz, shown 32x32.
fashion_mnist_c      the 10,000 fashion-mnist test images under 10 corruptions x 5 severities
                     (splits "clean" and "<corruption>/<severity>"), for mCE against a
                     reference model: imagenet_c.mce(errors, baseline=reference_errors).
pretrain_fractal     upstream pretraining data, formula-driven: 32 classes of iterated-function-
                     system fractals (each class one random contractive IFS, each image a
                     perturbed instance in random colours). Shares no image with any task.
pretrain_fashion_rot upstream pretraining data from real images: the fashion-mnist TRAIN images
                     with their class labels dropped; the label is the rotation applied
                     (0/90/180/270 degrees, a self-supervised pretext task). Test images -
                     and any train image identical to one - are never used.

Splits of every built-in task (patches.py and structured.py use the same protocol):
    train, test                   full size
    train800, val200              VTAB-1k protocol: 800 + 200 drawn with the seed (val = val200)
    train800val200                their union; its test split is the full, disjoint test set
The test split never depends on the seed, so results of different seeds are comparable.
"""
from __future__ import annotations

import gzip
import io
import struct
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ScaleshiftError
from ..extras import require
from ..io import file_sha256
from .base import DatasetSpec, Generated

HIRES = 96   # the size of the tasks for real ImageNet backbones (names end in _96)
PROTOCOL_SPLITS = ("train", "test", "train800", "val200", "train800val200")
PROTOCOL_ALIASES = {"val": "val200"}
PROTOCOL_TEXT = ("splits: train, test (full size); train800, val200, train800val200 "
                 "(VTAB-1k protocol, drawn with the seed; test is the full test set)")

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")   # apt: dataset-fashion-mnist
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_SIZES = {"train": 60000, "test": 10000}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
FASHION_LAYOUT = f"""\
no root: {DEBIAN_FASHION_MNIST}/, from Debian's package: sudo apt-get install
  dataset-fashion-mnist (or `make system-data` in a scaleshift checkout)
--root: <root>/ or <root>/FashionMNIST/raw/ (torchvision) holding
  train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
  t10k-labels-idx1-ubyte   (each optionally .gz); where the internet is reachable,
  torchvision.datasets.FashionMNIST(<root>, download=True) writes them"""

# fixed keys of the random streams, so no two built-ins share one
_KEYS = dict(fashion=11, digits=12, fashion_c=13, fractal=14, fashion_rot=15)
TEST_SEED = 0   # the test stream of every task is drawn with this, whatever the seed


def protocol_items(split: str, sizes: dict[str, int]) -> list[tuple[str, int]]:
    """(stream, index) items of a protocol split. `sizes` gives the stream lengths: 'train'
    and 'test', and 'val' when validation items come from their own stream (disjoint regions
    or source images); otherwise val200 is items 800..999 of the train stream."""
    def take(stream, start, stop):
        return [(stream, i) for i in range(start, stop)]
    if split == "train":
        return take("train", 0, sizes["train"])
    if split == "test":
        return take("test", 0, sizes["test"])
    train800 = take("train", 0, 800)
    val200 = take("val", 0, 200) if "val" in sizes else take("train", 800, 1000)
    if split == "train800":
        return train800
    if split == "val200":
        return val200
    if split == "train800val200":
        return train800 + val200
    raise ScaleshiftError(f"unknown split {split!r}; splits: {', '.join(PROTOCOL_SPLITS)}")


def check_num_classes(name: str, expected, actual: int) -> None:
    if expected is not None and expected != actual:
        raise ScaleshiftError(f"{name} has {actual} classes, not {expected}")


def gray_to_rgb(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), "L").convert("RGB")


# --- Fashion-MNIST files ------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (the MNIST format), gzipped or not."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ScaleshiftError(f"cannot read {path}: {exc}") from exc
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ScaleshiftError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ScaleshiftError(f"{path} is truncated: {array.size} bytes for shape {dims}")
    return array.reshape(dims)


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_dir(root=None) -> Path:
    """The folder holding the four fashion-mnist idx files (Debian's by default)."""
    candidates = ([Path(root), Path(root) / "FashionMNIST" / "raw", Path(root) / "raw"]
                  if root is not None else [DEBIAN_FASHION_MNIST])
    stems = [stem for pair in FASHION_FILES.values() for stem in pair]
    for folder in candidates:
        if all(_idx_path(folder, stem) for stem in stems):
            return folder
    raise ScaleshiftError(f"fashion-mnist files not found in {', '.join(map(str, candidates))}"
                          f"\nexpected layout:\n{FASHION_LAYOUT}")


@lru_cache(maxsize=2)
def _fashion_arrays(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, (images_stem, labels_stem) in FASHION_FILES.items():
        images = read_idx(_idx_path(Path(folder), images_stem))
        labels = read_idx(_idx_path(Path(folder), labels_stem)).astype(np.int64)
        if images.shape != (FASHION_SIZES[split], 28, 28) or labels.shape != images.shape[:1]:
            raise ScaleshiftError(f"fashion-mnist {split} in {folder}: images {images.shape}, "
                                  f"labels {labels.shape}; expected "
                                  f"({FASHION_SIZES[split]}, 28, 28)")
        if labels.max() >= 10:
            raise ScaleshiftError(f"fashion-mnist {split} labels out of range [0, 10)")
        out[split] = (images, labels)
    return out


def load_fashion_mnist(split: str, root=None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 28, 28], int64 labels [N]) of 'train' or 'test'."""
    return _fashion_arrays(str(fashion_mnist_dir(root)))[split]


# --- sources: finite pools of real images -------------------------------------------------

class ArraySource:
    """Streams over in-memory images: stream -> (images, labels, order of the items);
    `size`: shown at size x size (bicubic) instead of their own size."""

    def __init__(self, pools: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 size: int | None = None):
        self.pools, self.size = pools, size

    def labels(self, stream: str) -> np.ndarray:
        _, labels, order = self.pools[stream]
        return labels[order]

    def image(self, stream: str, i: int) -> Image.Image:
        images, _, order = self.pools[stream]
        image = gray_to_rgb(images[order[i]])
        if self.size is not None:
            image = image.resize((self.size, self.size), Image.BICUBIC)
        return image


def build_fashion_mnist(root=None, split="train", *, seed=0, num_classes=None, strict=False,
                        size=None):
    check_num_classes("fashion_mnist", num_classes, 10)
    train_x, train_y = load_fashion_mnist("train", root)
    test_x, test_y = load_fashion_mnist("test", root)
    source = ArraySource({
        "train": (train_x, train_y, np.random.default_rng([seed, _KEYS["fashion"]]).permutation(
            len(train_y))),
        "test": (test_x, test_y, np.arange(len(test_y))),
    }, size)
    items = protocol_items(split, dict(train=len(train_y), test=len(test_y)))
    return Generated(source, items, 10, FASHION_CLASSES,
                     meta=dict(files=str(fashion_mnist_dir(root))))


# The "Optical Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998; UCI
# Machine Learning Repository, https://archive.ics.uci.edu/dataset/80, CC BY 4.0): the same
# bytes scikit-learn ships as datasets/data/digits.csv.gz, so no extra is needed to read it.
DIGITS_FILE = Path(__file__).with_name("digits.csv.gz")
DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"


@lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(the 1,797 images as float64 [N, 8, 8] in 0..16, int64 labels [N]), as scikit-learn's
    load_digits() gives them, read from the file shipped with scaleshift."""
    if file_sha256(DIGITS_FILE) != DIGITS_SHA256:
        raise ScaleshiftError(f"{DIGITS_FILE} does not have its pinned sha256; reinstall scaleshift")
    with gzip.open(DIGITS_FILE, "rt", encoding="ascii") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def build_digits(root=None, split="train", *, seed=0, num_classes=None, strict=False,
                 size=None):
    """size None: 8x8 shown as 32x32 blocks; else the 8x8 images resized to size (bicubic)."""
    check_num_classes("digits", num_classes, 10)
    pixels, labels = load_digits()
    images = np.round(pixels * (255 / 16)).astype(np.uint8)
    if size is None:
        images = images.repeat(4, axis=1).repeat(4, axis=2)             # 8x8 -> 32x32 blocks
    fixed = np.random.default_rng([TEST_SEED, _KEYS["digits"]]).permutation(len(labels))
    test, pool = np.sort(fixed[:597]), fixed[597:]                       # 597 test, 1200 train
    train = pool[np.random.default_rng([seed, _KEYS["digits"]]).permutation(len(pool))]
    source = ArraySource({"train": (images, labels, train), "test": (images, labels, test)},
                         size)
    items = protocol_items(split, dict(train=len(train), test=len(test)))
    return Generated(source, items, 10, [str(d) for d in range(10)])


# --- fashion-mnist-C ----------------------------------------------------------------------
# Each corruption maps a float image in [0, 1] to a corrupted one, severity 1..5 increasing.

def _gaussian_noise(x, s, rng):
    return x + rng.normal(0, (0.04, 0.08, 0.12, 0.18, 0.26)[s - 1], x.shape)


def _shot_noise(x, s, rng):
    lam = (60, 25, 12, 5, 3)[s - 1]
    return rng.poisson(x * lam) / lam


def _impulse_noise(x, s, rng):
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[s - 1]
    u = rng.random(x.shape)
    x = x.copy()
    x[u < amount / 2] = 0.0
    x[u > 1 - amount / 2] = 1.0
    return x


def _gaussian_blur(x, s, rng):
    gaussian_filter = require("scipy.ndimage", "fashion-mnist-C").gaussian_filter
    return gaussian_filter(x, (0.6, 0.9, 1.2, 1.6, 2.2)[s - 1], mode="nearest")


def _motion_blur(x, s, rng):
    convolve = require("scipy.ndimage", "fashion-mnist-C").convolve
    length = (3, 5, 7, 9, 11)[s - 1]
    angle = rng.uniform(0, np.pi)
    kernel = np.zeros((length, length))
    c = (length - 1) / 2
    for t in np.linspace(-c, c, 4 * length):
        kernel[int(round(c + t * np.sin(angle))), int(round(c + t * np.cos(angle)))] = 1.0
    return convolve(x, kernel / kernel.sum(), mode="nearest")


def _contrast(x, s, rng):
    mean = x.mean()
    return (x - mean) * (0.5, 0.35, 0.25, 0.15, 0.08)[s - 1] + mean


def _brightness(x, s, rng):
    return x + (0.15, 0.25, 0.35, 0.45, 0.55)[s - 1]


def _pixelate(x, s, rng):
    side = x.shape[0]
    small = max(2, int(side * (0.7, 0.55, 0.45, 0.35, 0.25)[s - 1]))
    img = Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255), "L")
    img = img.resize((small, small), Image.BOX).resize((side, side), Image.NEAREST)
    return np.asarray(img, dtype=np.float64) / 255


def _jpeg_compression(x, s, rng):
    buffer = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255), "L").save(
        buffer, "JPEG", quality=(25, 18, 12, 8, 5)[s - 1])
    return np.asarray(Image.open(buffer), dtype=np.float64) / 255


def _elastic_transform(x, s, rng):
    ndimage = require("scipy.ndimage", "fashion-mnist-C")
    gaussian_filter, map_coordinates = ndimage.gaussian_filter, ndimage.map_coordinates
    alpha = (20, 35, 50, 70, 90)[s - 1]
    dy, dx = (gaussian_filter(rng.uniform(-1, 1, x.shape), 3.0) * alpha for _ in range(2))
    rows, cols = np.meshgrid(np.arange(x.shape[0]), np.arange(x.shape[1]), indexing="ij")
    return map_coordinates(x, [rows + dy, cols + dx], order=1, mode="reflect")


FASHION_CORRUPTIONS = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise, "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur, "contrast": _contrast, "brightness": _brightness,
    "pixelate": _pixelate, "jpeg_compression": _jpeg_compression,
    "elastic_transform": _elastic_transform,
}
FASHION_C_SPLITS = ("clean",) + tuple(f"{c}/{s}" for c in FASHION_CORRUPTIONS
                                      for s in range(1, 6))


def corrupt(image: np.ndarray, corruption: str, severity: int,
            rng: np.random.Generator) -> np.ndarray:
    """A uint8 grayscale image under one catalogue corruption (uint8 out)."""
    out = FASHION_CORRUPTIONS[corruption](image.astype(np.float64) / 255, severity, rng)
    return np.uint8(np.round(np.clip(out, 0, 1) * 255))


class FashionCSource:
    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int):
        self.images, self._labels, self.seed = images, labels, seed

    def labels(self, stream: str) -> np.ndarray:
        return self._labels

    def image(self, stream: str, i: int) -> Image.Image:
        if stream == "clean":
            return gray_to_rgb(self.images[i])
        corruption, severity = stream.split("/")
        code = list(FASHION_CORRUPTIONS).index(corruption)
        rng = np.random.default_rng([self.seed, _KEYS["fashion_c"], code, int(severity), i])
        return gray_to_rgb(corrupt(self.images[i], corruption, int(severity), rng))


def build_fashion_mnist_c(root=None, split="clean", *, seed=0, num_classes=None, strict=False):
    check_num_classes("fashion_mnist_c", num_classes, 10)
    images, labels = load_fashion_mnist("test", root)
    source = FashionCSource(images, labels, seed)
    return Generated(source, [(split, i) for i in range(len(labels))], 10, FASHION_CLASSES,
                     meta=dict(corruptions=list(FASHION_CORRUPTIONS)))


# --- upstream pretraining data ------------------------------------------------------------

FRACTAL_CLASSES, FRACTAL_SIZE = 32, 32
FRACTAL_SIZES = dict(train=FRACTAL_CLASSES * 400, val=FRACTAL_CLASSES * 50)


def _chaos_game(A, b, p, rng, walkers=256, steps=16, burn=4) -> np.ndarray:
    """Points of the IFS attractor: many short random walks, run in parallel."""
    x = rng.uniform(-1, 1, (walkers, 2))
    choice = rng.choice(len(p), size=(steps, walkers), p=p)
    points = []
    for t in range(steps):
        m = choice[t]
        x = np.einsum("wij,wj->wi", A[m], x) + b[m]
        if t >= burn:
            points.append(x)
    return np.concatenate(points)


def _raster(points: np.ndarray, size: int) -> np.ndarray:
    """Hit counts of the points on a size x size canvas, fitted with the aspect kept."""
    lo, hi = points.min(0), points.max(0)
    span = max(float((hi - lo).max()), 1e-9)
    uv = (points - lo) / span + (1 - (hi - lo) / span) / 2
    ij = np.clip((uv * (size - 3) + 1).astype(int), 0, size - 1)
    canvas = np.zeros((size, size))
    np.add.at(canvas, (ij[:, 1], ij[:, 0]), 1.0)
    return canvas


@lru_cache(maxsize=None)
def fractal_system(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class k: 2-4 contractive affine maps whose attractor fills >= 12% of the canvas."""
    for attempt in range(1000):
        rng = np.random.default_rng([_KEYS["fractal"], k, attempt])
        n = int(rng.integers(2, 5))
        A = rng.uniform(-1, 1, (n, 2, 2))
        A *= (rng.uniform(0.35, 0.85, n) / np.linalg.norm(A, ord=2, axis=(1, 2)))[:, None, None]
        b = rng.uniform(-1, 1, (n, 2))
        p = np.abs(np.linalg.det(A)) + 0.02
        p /= p.sum()
        if (_raster(_chaos_game(A, b, p, rng), FRACTAL_SIZE) > 0).mean() >= 0.12:
            return A, b, p
    raise RuntimeError(f"no space-filling IFS found for fractal class {k}")


class FractalSource:
    def __init__(self, seed: int):
        self.seed = seed

    def labels(self, stream: str) -> np.ndarray:
        return np.arange(FRACTAL_SIZES[stream]) % FRACTAL_CLASSES

    def image(self, stream: str, i: int) -> Image.Image:
        k = i % FRACTAL_CLASSES
        A, b, p = fractal_system(k)
        rng = np.random.default_rng([self.seed, _KEYS["fractal"], ("train", "val").index(stream),
                                     i])
        A = A * (1 + rng.normal(0, 0.06, A.shape))                     # instance variation
        hits = np.log1p(_raster(_chaos_game(A, b, p, rng), FRACTAL_SIZE))
        alpha = (hits / hits.max())[..., None]
        fg, bg = rng.uniform(100, 255, 3), rng.uniform(0, 60, 3)
        rgb = np.uint8(alpha * fg + (1 - alpha) * bg)
        if rng.random() < 0.5:
            rgb = rgb[:, ::-1]
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


def build_pretrain_fractal(root=None, split="train", *, seed=0, num_classes=None, strict=False):
    check_num_classes("pretrain_fractal", num_classes, FRACTAL_CLASSES)
    items = [(split, i) for i in range(FRACTAL_SIZES[split])]
    return Generated(FractalSource(seed), items, FRACTAL_CLASSES,
                     [f"ifs_{k:02d}" for k in range(FRACTAL_CLASSES)])


ROTATIONS = ("0", "90", "180", "270")


def fashion_pretrain_indices(root=None) -> dict[str, np.ndarray]:
    """Train-image indices for upstream pretraining: every fashion-mnist TRAIN image that is
    not byte-identical to a test image, split by a fixed permutation into train / val (5,000)."""
    train_x, _ = load_fashion_mnist("train", root)
    test_x, _ = load_fashion_mnist("test", root)
    test_bytes = {image.tobytes() for image in test_x}
    keep = np.array([i for i, image in enumerate(train_x) if image.tobytes() not in test_bytes])
    order = keep[np.random.default_rng([TEST_SEED, _KEYS["fashion_rot"]]).permutation(len(keep))]
    return dict(train=order[5000:], val=order[:5000])


class FashionRotationSource:
    def __init__(self, images: np.ndarray, indices: dict[str, np.ndarray], seed: int):
        self.images, self.indices = images, indices
        self.rotation = {stream: np.random.default_rng([seed, _KEYS["fashion_rot"], code])
                         .integers(0, 4, len(idx))
                         for code, (stream, idx) in enumerate(sorted(indices.items()))}

    def labels(self, stream: str) -> np.ndarray:
        return self.rotation[stream]

    def image(self, stream: str, i: int) -> Image.Image:
        image = self.images[self.indices[stream][i]]
        return gray_to_rgb(np.rot90(image, k=int(self.rotation[stream][i])))


def build_pretrain_fashion_rot(root=None, split="train", *, seed=0, num_classes=None,
                               strict=False):
    check_num_classes("pretrain_fashion_rot", num_classes, 4)
    indices = fashion_pretrain_indices(root)
    source = FashionRotationSource(load_fashion_mnist("train", root)[0], indices, seed)
    items = [(split, i) for i in range(len(indices[split]))]
    return Generated(source, items, 4, ROTATIONS, meta=dict(source="fashion-mnist train"))


SPECS = [
    DatasetSpec("fashion_mnist", 10, PROTOCOL_SPLITS, FASHION_LAYOUT + "\n" + PROTOCOL_TEXT,
                "builtin", build_fashion_mnist, needs_root=False,
                description="Fashion-MNIST, real 28x28 images (60,000 / 10,000)",
                names=("fashionmnist",), split_aliases=PROTOCOL_ALIASES),
    DatasetSpec("digits", 10, PROTOCOL_SPLITS,
                "built in: the UCI handwritten digits shipped with scaleshift (1,797 images; "
                "597 fixed test)\n"
                + PROTOCOL_TEXT, "builtin", build_digits, needs_root=False,
                description="real handwritten digits (UCI, shipped), 8x8 shown as 32x32",
                split_aliases=PROTOCOL_ALIASES),
    DatasetSpec("fashion_mnist_c", 10, FASHION_C_SPLITS,
                "the fashion-mnist test set (files as for fashion_mnist) under corruptions:\n  "
                + ", ".join(FASHION_CORRUPTIONS) + "\nsplits: clean, <corruption>/<severity 1..5>",
                "builtin", build_fashion_mnist_c, needs_root=False,
                description="fashion-mnist test set x 10 corruptions x 5 severities (for mCE)",
                extras=("scipy",)),
    DatasetSpec("pretrain_fractal", FRACTAL_CLASSES, ("train", "val"),
                f"built in: formula-driven IFS fractals, {FRACTAL_CLASSES} classes, "
                f"{FRACTAL_SIZE}x{FRACTAL_SIZE}, train {FRACTAL_SIZES['train']} / val "
                f"{FRACTAL_SIZES['val']}", "builtin", build_pretrain_fractal, needs_root=False,
                description="upstream pretraining: formula-driven fractals (no real images)"),
    DatasetSpec("pretrain_fashion_rot", 4, ("train", "val"),
                "fashion-mnist TRAIN images only (files as for fashion_mnist), class labels "
                "dropped;\nlabel = rotation 0/90/180/270; val = 5,000 held-out train images",
                "builtin", build_pretrain_fashion_rot, needs_root=False,
                description="upstream pretraining: unlabeled fashion-mnist train, rotation "
                            "pretext"),
    DatasetSpec(f"fashion_mnist_{HIRES}", 10, PROTOCOL_SPLITS,
                FASHION_LAYOUT + f"\nshown at {HIRES}x{HIRES} (bicubic)\n" + PROTOCOL_TEXT,
                "builtin", partial(build_fashion_mnist, size=HIRES), needs_root=False,
                description=f"Fashion-MNIST at {HIRES} px (same items and splits)",
                split_aliases=PROTOCOL_ALIASES),
    DatasetSpec(f"digits_{HIRES}", 10, PROTOCOL_SPLITS,
                f"as digits, the 8x8 images resized to {HIRES}x{HIRES} (bicubic)\n"
                + PROTOCOL_TEXT, "builtin", partial(build_digits, size=HIRES), needs_root=False,
                description=f"real handwritten digits (UCI, shipped) at {HIRES} px (same splits)",
                split_aliases=PROTOCOL_ALIASES),
]

"""Built-in offline datasets: real files, determinism across processes, disjoint splits."""
import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scaleshift.data import build_dataset, check_dataset
from scaleshift.data.builtin import (DEBIAN_FASHION_MNIST, FASHION_CORRUPTIONS, FASHION_FILES,
                                     corrupt, fashion_pretrain_indices, load_fashion_mnist,
                                     read_idx)
from scaleshift.errors import ScaleshiftError

HAVE_FASHION = all((DEBIAN_FASHION_MNIST / f"{stem}.gz").is_file()
                   for pair in FASHION_FILES.values() for stem in pair)
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason="Debian package dataset-fashion-mnist not installed "
    "(`apt-get install dataset-fashion-mnist` puts the idx files in /usr/share/datasets/"
    "fashion-mnist)")

GENERATED = ["patch_textures", "patch_photos", "patch_medical", "faces", "struct_location",
             "struct_orientation", "struct_count", "struct_distance"]


def digest(jobs, seed: int) -> dict:
    """sha256 of the labels and the first `count` images of each (name, split, count)."""
    out = {}
    for name, split, count in jobs:
        ds = build_dataset(name, split=split, seed=seed)
        h = hashlib.sha256(json.dumps(ds.targets).encode())
        for i in range(count):
            h.update(ds[i][0].tobytes())
        out[f"{name}/{split}"] = h.hexdigest()
    return out


@pytest.mark.slow
def test_builtins_identical_across_processes():
    jobs = [[name, "train800", 40] for name in GENERATED + ["digits"]]
    jobs += [["pretrain_fractal", "train", 40]]
    jobs += [[name, "test", 40] for name in GENERATED]
    if HAVE_FASHION:
        jobs += [["fashion_mnist", "train800", 40], ["fashion_mnist_c", "motion_blur/3", 40],
                 ["pretrain_fashion_rot", "train", 40]]
    here = digest(jobs, seed=3)
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from test_data_builtin import digest; print(json.dumps(digest({jobs!r}, 3)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert json.loads(result.stdout) == here                     # another process, same seed
    other = digest(jobs, seed=4)
    for name, split, _ in jobs:
        key = f"{name}/{split}"
        if split == "test":
            assert other[key] == here[key], key                    # test never depends on seed
        elif name != "fashion_mnist_c":
            assert other[key] != here[key], key


def _hashes(ds, count=None):
    return {hashlib.sha1(ds[i][0].tobytes()).hexdigest() for i in range(count or len(ds))}


@pytest.mark.parametrize("name", [GENERATED[0], *(pytest.param(n, marks=pytest.mark.slow) for n in GENERATED[1:])])
def test_protocol_splits_and_disjoint_test(name):
    ds = {s: build_dataset(name, split=s, seed=1)
          for s in ("train800", "val200", "train800val200", "test")}
    assert [len(ds[s]) for s in ("train800", "val200", "train800val200")] == [800, 200, 1000]
    assert ds["train800val200"].items == ds["train800"].items + ds["val200"].items
    assert set(ds["train800"].items).isdisjoint(ds["val200"].items)
    assert len(set(ds["train800val200"].targets)) == ds["test"].num_classes
    assert _hashes(ds["train800val200"]).isdisjoint(_hashes(ds["test"], 1000))
    image, label = ds["train800"][0]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert label == ds["train800"].targets[0]
    assert len(build_dataset(name, split="train")) >= 2000


def test_patch_regions_and_face_pools_are_disjoint():
    from scaleshift.data.patches import GRID, FaceSource, PatchSource
    source = PatchSource("patch_medical", seed=0)
    for blocks in source.blocks:
        sets = [set(blocks[s]) for s in ("train", "val", "test")]
        assert [len(s) for s in sets] == [10, 2, 4] and len(set().union(*sets)) == GRID * GRID
    faces = FaceSource(seed=0)
    for label in (0, 1):
        pools = [set(faces.pools[label][s]) for s in ("train", "val", "test")]
        assert sum(map(len, pools)) == len(set().union(*pools)) == 100


def test_struct_location_label_is_the_objects_cell():
    ds = build_dataset("struct_location", split="train800", seed=2)
    for i in range(60):
        pixels = np.asarray(ds[i][0]).astype(int)
        ys, xs = np.nonzero(pixels.max(axis=2) > 150)            # objects are bright, bg dark
        assert divmod(ds.targets[i], 4) == (int(ys.mean()) // 16, int(xs.mean()) // 16)


def test_digits_splits():
    test = build_dataset("digits", split="test")
    train = build_dataset("digits", split="train", seed=5)
    assert (len(train), len(test)) == (1200, 597) and test[0][0].size == (32, 32)
    assert set(train.source.pools["train"][2]).isdisjoint(test.source.pools["test"][2])
    report = check_dataset("digits")
    assert {s: r["images"] for s, r in report["splits"].items()} == dict(
        train=1200, test=597, train800=800, val200=200, train800val200=1000)


def test_the_shipped_digits_equal_scikit_learns_and_need_no_extra(monkeypatch):
    from scaleshift.data import builtin
    images, labels = builtin.load_digits()
    assert images.shape == (1797, 8, 8) and np.bincount(labels).tolist() == \
        [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    reference = sklearn_datasets.load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)
    builtin.load_digits.cache_clear()
    for module in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, module, None)
    test = build_dataset("digits", split="test")   # read again, scikit-learn blocked
    assert len(test) == 597 and test[0][0].size == (32, 32)


def test_a_changed_digits_file_is_refused(tmp_path, monkeypatch):
    from scaleshift.data import builtin
    changed = tmp_path / "digits.csv.gz"
    changed.write_bytes(gzip.compress(gzip.decompress(builtin.DIGITS_FILE.read_bytes())
                                      .replace(b"0,0,5,13", b"0,0,5,14", 1)))
    monkeypatch.setattr(builtin, "DIGITS_FILE", changed)
    builtin.load_digits.cache_clear()
    with pytest.raises(ScaleshiftError, match="pinned sha256"):
        builtin.load_digits()
    builtin.load_digits.cache_clear()


def test_corruptions_grow_with_severity():
    from scaleshift.data.builtin import load_digits
    images = [np.asarray(Image.fromarray(np.uint8(x * 255 / 16)).resize((28, 28), Image.BICUBIC))
              for x in load_digits()[0][:30]]                # smooth 28x28, like fashion
    for name in FASHION_CORRUPTIONS:
        change = []
        for severity in range(1, 6):
            rng = np.random.default_rng(severity)
            change.append(np.mean([np.abs(corrupt(x, name, severity, rng).astype(float) - x).mean()
                                   for x in images]))
        assert all(a < b for a, b in zip(change, change[1:])), (name, change)


def test_read_idx(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    (tmp_path / "a-idx3-ubyte").write_bytes(raw + array.tobytes())
    with gzip.open(tmp_path / "b-idx3-ubyte.gz", "wb") as f:
        f.write(raw + array.tobytes())
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), array)
    assert np.array_equal(read_idx(tmp_path / "b-idx3-ubyte.gz"), array)
    (tmp_path / "c").write_bytes(raw + array.tobytes()[:-1])
    with pytest.raises(ScaleshiftError, match="truncated"):
        read_idx(tmp_path / "c")
    with pytest.raises(ScaleshiftError, match=r"fashion-mnist files not found(.|\n)*t10k"):
        build_dataset("fashion_mnist", tmp_path)


@needs_fashion
def test_fashion_mnist_real_files(tmp_path):
    train, test = build_dataset("fashion_mnist", split="train"), build_dataset("fashion_mnist",
                                                                              split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(train.targets).tolist() == [6000] * 10
    assert np.bincount(test.targets).tolist() == [1000] * 10
    image, label = test[0]
    assert image.size == (28, 28) and image.mode == "RGB" and label == 9   # an ankle boot
    raw = tmp_path / "FashionMNIST" / "raw"                        # a torchvision-style root
    raw.mkdir(parents=True)
    for pair in FASHION_FILES.values():
        for stem in pair:
            (raw / f"{stem}.gz").symlink_to(DEBIAN_FASHION_MNIST / f"{stem}.gz")
    mine = build_dataset("fashion_mnist", tmp_path, split="test")
    assert mine[123][0].tobytes() == test[123][0].tobytes()
    sizes = {s: r["images"] for s, r in check_dataset("fashion_mnist")["splits"].items()}
    assert sizes == dict(train=60000, test=10000, train800=800, val200=200, train800val200=1000)


@needs_fashion
def test_fashion_mnist_c_and_pretraining_data():
    clean = build_dataset("fashion_mnist_c", split="clean")
    fog = build_dataset("fashion_mnist_c", split="jpeg_compression/5")
    assert len(clean) == len(fog) == 10000 and clean.targets == fog.targets
    assert clean[7][0].tobytes() == build_dataset("fashion_mnist", split="test")[7][0].tobytes()
    assert clean[7][0].tobytes() != fog[7][0].tobytes()
    # upstream data never contains a downstream evaluation image
    test_x, _ = load_fashion_mnist("test")
    train_x, _ = load_fashion_mnist("train")
    idx = fashion_pretrain_indices()
    assert set(idx["train"]).isdisjoint(idx["val"])
    assert len(idx["train"]) + len(idx["val"]) <= 60000
    test_bytes = {x.tobytes() for x in test_x}
    used = np.concatenate([idx["train"], idx["val"]])
    assert not any(train_x[i].tobytes() in test_bytes for i in used)
    rot = build_dataset("pretrain_fashion_rot", split="val")
    image, label = rot[0]
    assert np.array_equal(np.asarray(image)[..., 0], np.rot90(train_x[idx["val"][0]], label))


def test_fractal_pretraining_data():
    ds = build_dataset("pretrain_fractal", split="val")
    assert len(ds) == 1600 and ds.num_classes == 32 and ds[0][0].size == (32, 32)
    assert np.bincount(ds.targets).tolist() == [50] * 32
    assert len(_hashes(ds, 64)) == 64


@pytest.mark.slow
def test_a_1k_task_renders_every_item():
    # how fast is a benchmark's business (no timed unit tests): here every item renders, labelled
    for split in ("train800val200", "test"):
        ds = build_dataset("struct_count", split=split, seed=0)
        labels = {ds[i][1] for i in range(len(ds))}
        assert labels <= set(range(ds.num_classes)) and len(labels) > 1


@needs_fashion
def test_structured_tasks_with_fashion_sprites():
    from scaleshift.data.structured import StructuredSource
    shapes = build_dataset("struct_orientation", split="train800", seed=0)
    items = build_dataset("struct_orientation", split="train800", seed=0, sprites="fashion")
    assert items.targets == shapes.targets                       # same labels, other objects
    assert items[0][0].size == (64, 64) and items[0][0].tobytes() != shapes[0][0].tobytes()
    source = StructuredSource("struct_count", seed=0, sprites="fashion")

    class Recorder:                                              # logs which items are drawn
        def __init__(self, images):
            self.images, self.used = images, []

        def __len__(self):
            return len(self.images)

        def __getitem__(self, index):
            self.used.append(int(index))
            return self.images[index]

    used = {}
    for stream in ("train", "test"):
        source.fashion = Recorder(source.fashion.images if isinstance(source.fashion, Recorder)
                                  else source.fashion)
        for i in range(30):
            source.image(stream, i)
        used[stream] = source.fashion.used
    assert max(used["train"]) < 5000 <= min(used["test"])      # never the same sprite
    with pytest.raises(ScaleshiftError, match="sprites must be"):
        build_dataset("struct_count", sprites="emoji")

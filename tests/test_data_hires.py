"""The 96 px tasks for real ImageNet backbones (and elpv): protocol split sizes, a test set
disjoint from train800val200, determinism, labels in range; the 32 px tasks stay as they were."""
import hashlib
import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from scaleshift.data import build_dataset, list_datasets
from scaleshift.data import elpv
from scaleshift.data.builtin import DEBIAN_FASHION_MNIST, FASHION_FILES
from scaleshift.errors import ScaleshiftError

HAVE_FASHION = all((DEBIAN_FASHION_MNIST / f"{stem}.gz").is_file()
                   for pair in FASHION_FILES.values() for stem in pair)
HAVE_ELPV = importlib.util.find_spec(elpv.MODULE) is not None
needs_elpv = pytest.mark.skipif(not HAVE_ELPV, reason="elpv data not installed: "
                                f"`{elpv.INSTALL}` (CC-BY-NC-SA-4.0, installed on demand)")

GENERATED = ["patch_textures_96", "patch_textures_zoom_96", "patch_photos_96",
             "patch_photos_fine_96", "patch_medical_96", "patch_medical_zoom_96", "faces_96",
             "struct_location_96", "struct_orientation_96", "struct_count_96",
             "struct_distance_96"]
CLASSES = {"patch_textures_96": 4, "patch_textures_zoom_96": 12, "patch_photos_96": 10,
           "patch_photos_fine_96": 10, "patch_medical_96": 3, "patch_medical_zoom_96": 9,
           "faces_96": 2, "struct_location_96": 16, "struct_orientation_96": 16,
           "struct_count_96": 8, "struct_distance_96": 6, "digits_96": 10, "fashion_mnist_96": 10,
           "elpv_defect_96": 4, "elpv_type_96": 2}


def _hash(image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def test_every_96_task_is_registered():
    assert sorted(n for n in list_datasets() if n.endswith("_96")) == sorted(CLASSES)


def _check_protocol(name, sample=None):
    ds = {s: build_dataset(name, split=s, seed=1)
          for s in ("train800", "val200", "train800val200", "test")}
    assert [len(ds[s]) for s in ("train800", "val200", "train800val200")] == [800, 200, 1000]
    assert ds["train800val200"].items == ds["train800"].items + ds["val200"].items
    assert set(ds["train800"].items).isdisjoint(ds["val200"].items)
    for d in ds.values():
        assert d.num_classes == CLASSES[name]
        assert all(0 <= t < d.num_classes for t in d.targets)
    assert set(ds["train800val200"].targets) == set(range(CLASSES[name]))
    image, label = ds["test"][0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (96, 96)
    assert label == ds["test"].targets[0]
    return ds


@pytest.mark.parametrize("name", [GENERATED[0], *(pytest.param(n, marks=pytest.mark.slow) for n in GENERATED[1:])])
def test_generated_protocol_and_disjoint_test(name):
    ds = _check_protocol(name)
    # test patches come from held-out regions / source images / random streams: no test image
    # equals a training one (a sample of test against all of train800val200)
    train = {_hash(ds["train800val200"][i][0]) for i in range(1000)}
    assert train.isdisjoint(_hash(ds["test"][i][0]) for i in range(0, len(ds["test"]), 25))


@pytest.mark.parametrize("name", ["patch_textures_zoom_96", "patch_photos_fine_96",
                                  "struct_count_96", "faces_96", "digits_96"])
def test_deterministic_and_test_independent_of_seed(name):
    a, b = (build_dataset(name, split="train800", seed=5) for _ in range(2))
    c = build_dataset(name, split="train800", seed=6)
    first = [_hash(a[i][0]) for i in range(8)]
    assert first == [_hash(b[i][0]) for i in range(8)] and a.targets == b.targets
    assert first != [_hash(c[i][0]) for i in range(8)]
    t5, t6 = (build_dataset(name, split="test", seed=s) for s in (5, 6))
    assert t5.targets == t6.targets
    assert [_hash(t5[i][0]) for i in range(4)] == [_hash(t6[i][0]) for i in range(4)]


def test_digits_96_same_split_as_digits():
    small, large = (build_dataset(n, split="test") for n in ("digits", "digits_96"))
    assert small.targets == large.targets
    _check_protocol("digits_96")
    ds = build_dataset("digits_96", split="train800val200", seed=2)
    test = build_dataset("digits_96", split="test")
    assert set(ds.source.pools["train"][2][[i for _, i in ds.items]]).isdisjoint(
        test.source.pools["test"][2])


@pytest.mark.skipif(not HAVE_FASHION, reason="Debian package dataset-fashion-mnist not "
                    "installed (`apt-get install dataset-fashion-mnist`)")
def test_fashion_mnist_96():
    ds = _check_protocol("fashion_mnist_96")
    small = build_dataset("fashion_mnist", split="train800", seed=1)
    assert small.targets == ds["train800"].targets                  # the same items, larger
    assert np.asarray(small[0][0]).shape == (28, 28, 3)


def test_zoom_classes_are_texture_times_scale():
    ds = build_dataset("patch_textures_zoom_96", split="train800")
    assert len(ds.classes) == 12 and ds.classes[0] == "brick@60px"
    assert ds.meta["crops"] == [60, 84, 120]


@needs_elpv
@pytest.mark.parametrize("name", ["elpv_defect_96", "elpv_type_96"])
def test_elpv_protocol_and_disjoint_test(name):
    ds = _check_protocol(name)
    names = ds["test"].source.names
    order = ds["test"].source.order
    train_files = {names[order["train"][i]] for _, i in ds["train800val200"].items}
    test_files = {names[order["test"][i]] for _, i in ds["test"].items}
    assert len(test_files) == 1049 and train_files.isdisjoint(test_files)
    assert test_files == set(elpv.recorded_split()["test"])
    other = build_dataset(name, split="train800", seed=2)
    assert other.targets != ds["train800"].targets                  # seed draws train800
    assert build_dataset(name, split="test", seed=2).targets == ds["test"].targets


@needs_elpv
def test_elpv_recorded_split_is_the_seeded_stratified_draw():
    record = elpv.recorded_split()
    names, grades, types, digest = elpv.read_labels(str(elpv.data_dir()))
    assert digest == record["labels_sha256"]
    assert elpv.make_split(names, grades, types) == record["test"]
    test = np.isin(names, record["test"])
    for g in range(4):                                    # 40% of every stratum
        for t in range(2):
            members = (grades == g) & (types == t)
            assert abs(test[members].mean() - 0.4) < 0.02


def test_elpv_without_the_wheel_names_pip_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == elpv.MODULE else real(name, *a))
    with pytest.raises(ScaleshiftError, match="pip install elpv-dataset"):
        build_dataset("elpv_defect_96", split="train800")


# sha256 of the labels and first 20 images of each split of the 32 px tasks, seed 1, as they were
# before the 96 px tasks were added (their code paths are shared): they must never change.
PINNED_32 = {
    "patch_textures": "f948c8a2", "patch_photos": "0fbe55a2", "patch_medical": "54b7d31e",
    "faces": "929bcdba", "struct_location": "b7312434", "struct_orientation": "135f0d4b",
    "struct_count": "cbeb35dc", "struct_distance": "62117803", "digits": "34e0165f",
}


def digest_32(name: str) -> str:
    h = hashlib.sha256()
    for split in ("train800", "test"):
        ds = build_dataset(name, split=split, seed=1)
        h.update(json.dumps(ds.targets).encode())
        for i in range(20):
            h.update(ds[i][0].tobytes())
    return h.hexdigest()[:8]


@pytest.mark.parametrize("name", sorted(PINNED_32))
def test_32px_tasks_unchanged(name):
    assert digest_32(name) == PINNED_32[name]

"""Miniature trees in every on-disk format, built by hand in tmp_path, then loaded and checked.

FGVC trees use the full official class counts (one tiny JPEG per class and split), so they pass
`check_dataset` with no overrides; ImageNet-style trees use a few real wnids and num_classes.
"""
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from scaleshift.cli import main
from scaleshift.data import (build_dataset, check_dataset, get_dataset_spec, imagenet_a_mask,
                             imagenet_r_mask, imagenet_wnids, subset_predictions)
from scaleshift.data.imagenet import imagenet_a_wnids, imagenet_r_wnids
from scaleshift.data.imagenet_c import CORRUPTIONS
from scaleshift.errors import ScaleshiftError


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


JPEGS = [_jpeg(i) for i in range(4)]
NOT_AN_IMAGE = b"this is not a jpeg"
TRUNCATED = JPEGS[0][: len(JPEGS[0]) // 2]


def put(path, data=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(JPEGS[hash(path.name) % 4] if data is None else data)
    return path


# --- VTAB-1k (NOAH) ----------------------------------------------------------------------

def make_noah(root, task="kitti", classes=4, corrupt=True):
    folder = root / "vtab-1k" / task
    lists = {"train800": [], "val200": [], "test": []}
    for split, per_class in (("train800", 2), ("val200", 1), ("test", 2)):
        for c in range(classes):
            for k in range(per_class):
                rel = f"images/{split}/{len(lists[split]):06d}.jpg"
                put(folder / rel)
                lists[split].append(f"{rel} {c}")
    if corrupt:
        put(folder / "images/train800/000000.jpg", NOT_AN_IMAGE)
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_noah_tree_loads_and_checks(tmp_path):
    folder = make_noah(tmp_path)
    ds = build_dataset("vtab_kitti", folder, "train800")
    assert len(ds) == 8 and ds.num_classes == 4 and ds.meta["group"] == "structured"
    assert sorted(ds.targets) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ds.samples[1][0] == folder / "images/train800/000001.jpg"
    # the parent vtab-1k folder works as root too; aliases train / val
    assert len(build_dataset("vtab-kitti", tmp_path / "vtab-1k", "train")) == 12
    assert len(build_dataset("vtab/kitti", tmp_path / "vtab-1k", "val")) == 4
    report = check_dataset("vtab_kitti", tmp_path / "vtab-1k")
    assert {s: r["images"] for s, r in report["splits"].items()} == \
        dict(train800=7, val200=4, train800val200=11, test=8)
    assert report["splits"]["train800"]["files"] == 8
    assert report["classes"] == report["expected_classes"] == 4
    bad = {(item["split"], item["path"].split("vtab-1k/")[1]) for item in report["skipped"]}
    assert bad == {("train800", "kitti/images/train800/000000.jpg"),
                   ("train800val200", "kitti/images/train800/000000.jpg")}


def test_noah_errors(tmp_path):
    folder = make_noah(tmp_path, corrupt=False)
    put(folder / "images/test/000000.jpg", TRUNCATED)
    with pytest.raises(ScaleshiftError, match="unreadable"):
        check_dataset("vtab_kitti", folder, strict=True)
    (folder / "val200.txt").unlink()
    with pytest.raises(ScaleshiftError, match=r"val200\.txt(.|\n)*train800val200\.txt"):
        build_dataset("vtab_kitti", folder, "val200")         # names path + expected layout
    (folder / "test.txt").write_text("images/test/000000.jpg 4\n")
    with pytest.raises(ScaleshiftError, match="out of range"):
        build_dataset("vtab_kitti", folder, "test")
    (folder / "test.txt").write_text("images/train800/000001.jpg 0\n")
    with pytest.raises(ScaleshiftError, match="both train800 and test"):
        check_dataset("vtab_kitti", folder, splits=["train800", "test"], num_classes=4)
    (folder / "test.txt").write_text("images/test/000001.jpg 0\n")
    for split in ("train800", "val200", "train800val200"):            # class 3 nowhere
        lines = (folder / f"{split}.txt").read_text().splitlines() if split != "val200" else []
        (folder / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines
                                                     if not line.endswith(" 3")))
    with pytest.raises(ScaleshiftError, match="3 classes have readable images.*expected 4"):
        check_dataset("vtab_kitti", folder)


# --- FGVC: VPT json ------------------------------------------------------------------------

def test_vpt_json_tree(tmp_path):
    root = tmp_path / "CUB_200_2011"
    annos = {"train": {}, "val": {}, "test": {}}
    for c in range(1, 201):                                   # VPT-style ids, here 1-based
        for split in annos:
            rel = f"{c:03d}.Bird_{c}/{split}_{c}.jpg"
            put(root / "images" / rel)
            annos[split][rel] = c
    put(root / "images/001.Bird_1/train_1.jpg", NOT_AN_IMAGE)
    for split, anno in annos.items():
        (root / f"{split}.json").write_text(json.dumps(anno))
    ds = build_dataset("cub2011", root, "train")
    assert ds.meta["protocol"] == "vpt" and len(ds) == 200 and ds.num_classes == 200
    assert dict((p.name, y) for p, y in ds.samples)["train_17.jpg"] == 16
    assert len(build_dataset("cub", root, "trainval")) == 400
    report = check_dataset("cub200", root)
    assert list(report["splits"]) == ["train", "val", "test"]
    assert [r["images"] for r in report["splits"].values()] == [199, 200, 200]
    assert report["splits"]["train"]["classes"] == 199 and report["classes"] == 200
    assert len(report["skipped"]) == 1 and report["skipped"][0]["path"].endswith("train_1.jpg")
    # a class id used nowhere else makes 201 classes: an error, not a silent label shift
    annos["test"]["extra.jpg"] = 999
    (root / "test.json").write_text(json.dumps(annos["test"]))
    with pytest.raises(ScaleshiftError, match="201 distinct class ids"):
        build_dataset("cub2011", root, "train")
    (root / "val.json").write_text("{not json")
    with pytest.raises(ScaleshiftError, match="val.json is not valid JSON"):
        build_dataset("cub2011", root, "val")


# --- FGVC: official layouts ------------------------------------------------------------------

def make_cub_like(root, ids, paths_for):
    """images.txt / image_class_labels.txt / train_test_split.txt, one train + one test image
    per class id; returns {relative path: class id}."""
    images, labels, split, truth = [], [], [], {}
    for n, (cid, is_train) in enumerate((c, t) for c in ids for t in (1, 0)):
        image_id = f"{n:04x}-id" if paths_for == "nabirds" else str(n + 1)
        rel = f"{cid:04d}/{'train' if is_train else 'test'}_{cid}.jpg"
        put(root / "images" / rel)
        images.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {cid}")
        split.append(f"{image_id} {is_train}")
        truth[rel] = cid
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return truth


def test_cub_official(tmp_path):
    make_cub_like(tmp_path / "CUB_200_2011", range(1, 201), "cub")
    ds = build_dataset("cub2011", tmp_path, "train")       # the folder holding CUB_200_2011/
    assert ds.meta["protocol"] == "official" and len(ds) == 200
    assert all(int(p.parent.name) - 1 == y for p, y in ds.samples)
    report = check_dataset("cub2011", tmp_path)
    assert list(report["splits"]) == ["train", "test"]
    assert [r["images"] for r in report["splits"].values()] == [200, 200]
    assert report["classes"] == 200 and report["skipped"] == []
    with pytest.raises(ScaleshiftError, match="needs the VPT json layout"):
        build_dataset("cub2011", tmp_path, "val")
    labels = tmp_path / "CUB_200_2011/image_class_labels.txt"
    lines = labels.read_text().splitlines()
    assert lines[0] == "1 1"
    labels.write_text("\n".join(["1 201"] + lines[1:]) + "\n")
    with pytest.raises(ScaleshiftError, match="out of range"):
        build_dataset("cub2011", tmp_path, "train")


def test_nabirds_official_sparse_ids(tmp_path):
    ids = [295 + 2 * k for k in range(555)]                 # NABirds class ids are sparse
    make_cub_like(tmp_path, ids, "nabirds")
    ds = build_dataset("nabirds", tmp_path, "test")
    assert len(ds) == 555
    assert all(ids.index(int(p.parent.name)) == y for p, y in ds.samples)
    report = check_dataset("nabirds", tmp_path)
    assert [r["images"] for r in report["splits"].values()] == [555, 555]
    with pytest.raises(ScaleshiftError, match="555 distinct classes, expected 556"):
        build_dataset("nabirds", tmp_path, "test", num_classes=556)


def test_stanford_dogs_mat_lists(tmp_path):
    from scipy.io import savemat
    for split in ("train", "test"):
        files = [f"n02{c:06d}-Breed_{c}/{split}_{c}.jpg" for c in range(1, 121)]
        for f in files:
            put(tmp_path / "Images" / f)
        cells = np.empty((len(files), 1), dtype=object)
        cells[:, 0] = files
        annotations = np.empty((len(files), 1), dtype=object)
        annotations[:, 0] = [f.removesuffix(".jpg") for f in files]
        savemat(tmp_path / f"{split}_list.mat",
                dict(file_list=cells, annotation_list=annotations,
                     labels=np.arange(1, 121, dtype=np.float64)[:, None]))
    ds = build_dataset("stanford_dogs", tmp_path, "train")
    assert len(ds) == 120
    assert ds.samples[4] == (tmp_path / "Images/n02000005-Breed_5/train_5.jpg", 4)
    report = check_dataset("dogs", tmp_path)
    assert [r["images"] for r in report["splits"].values()] == [120, 120]
    (tmp_path / "test_list.mat").unlink()
    with pytest.raises(ScaleshiftError, match=r"test_list\.mat(.|\n)*Images/"):
        build_dataset("stanford_dogs", tmp_path, "test")


@pytest.mark.parametrize("name,classes,eval_dir", [("oxford_flowers", 102, "val"),
                                                   ("stanford_cars", 196, "test")])
def test_flowers_cars_class_folders(tmp_path, name, classes, eval_dir):
    names = [str(c) for c in range(1, classes + 1)]       # natural order: '2' before '10'
    for c in names:
        put(tmp_path / "train" / c / f"a_{c}.jpg")
        put(tmp_path / eval_dir / c / f"b_{c}.jpg")
    ds = build_dataset(name, tmp_path, "test")
    assert len(ds) == classes
    assert dict((p.parent.name, y) for p, y in ds.samples)["10"] == 9
    report = check_dataset(name, tmp_path)
    assert [r["images"] for r in report["splits"].values()] == [classes, classes]
    (tmp_path / "train" / "1" / "a_1.jpg").unlink()
    (tmp_path / "train" / "1").rmdir()
    with pytest.raises(ScaleshiftError, match=f"{classes - 1} class folders, expected {classes}"):
        build_dataset(name, tmp_path, "train")


# --- ImageNet, -A, -R, -C -----------------------------------------------------------------

def test_imagenet_folders(tmp_path):
    wnids = ["n01440764", "n01443537", "n15075141"]           # indices 0, 1, 999
    for split in ("train", "val"):
        for w in wnids:
            put(tmp_path / split / w / f"{split}_{w}.JPEG")
    ds = build_dataset("imagenet", tmp_path, "val", num_classes=3)
    assert ds.num_classes == 1000 and sorted(ds.targets) == [0, 1, 999]
    report = check_dataset("imagenet", tmp_path, num_classes=3)
    assert report["splits"] == dict(train=dict(images=3, files=3, classes=3, skipped=0),
                                    val=dict(images=3, files=3, classes=3, skipped=0))
    with pytest.raises(ScaleshiftError, match="3 class folders, expected 1000"):
        build_dataset("imagenet", tmp_path, "train")
    put(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(ScaleshiftError, match="directly in"):
        build_dataset("imagenet", tmp_path, "val", num_classes=3)
    put(tmp_path / "train" / "dogs" / "x.jpg")
    with pytest.raises(ScaleshiftError, match="not a class of this dataset"):
        build_dataset("imagenet", tmp_path, "train", num_classes=4)


def test_imagenet_a_r_masks():
    r, a = imagenet_r_mask(), imagenet_a_mask()
    assert r.shape == a.shape == (200,) and r.dtype == torch.long
    assert torch.all(r[1:] > r[:-1]) and torch.all(a[1:] > a[:-1])
    # hand-checked: R starts goldfish (1), great white shark (2), hammerhead (4);
    # A starts stingray (6), goldfinch (11), junco (13)
    assert r[:3].tolist() == [1, 2, 4] and a[:3].tolist() == [6, 11, 13]
    wnids = imagenet_wnids()
    assert [wnids[i] for i in r] == list(imagenet_r_wnids())
    logits = torch.full((2, 1000), -5.0)
    logits[:, 0] = 10.0                                       # tench: not an ImageNet-R class
    logits[0, r[7]] = 3.0
    logits[1, r[199]] = 2.0
    assert subset_predictions(logits, r).tolist() == [7, 199]


@pytest.mark.parametrize("name,wnids,mask", [("imagenet_r", imagenet_r_wnids, imagenet_r_mask),
                                             ("imagenet_a", imagenet_a_wnids, imagenet_a_mask)])
def test_imagenet_a_r_trees(tmp_path, name, wnids, mask):
    folder = name.replace("_", "-")
    root = tmp_path / folder
    for w in wnids():
        (root / w).mkdir(parents=True)
    chosen = [wnids()[0], wnids()[5], wnids()[199]]
    for w in chosen:
        put(root / w / "x.jpg")
    assert torch.equal(mask(tmp_path), mask())               # derived from the tree == published
    with pytest.raises(ScaleshiftError, match=rf"class folder \S*{wnids()[1]} holds no images"):
        build_dataset(name, tmp_path, "test")                  # an empty folder is named
    for w in wnids():
        if w not in chosen:
            put(root / w / "x.jpg", NOT_AN_IMAGE)
    ds = build_dataset(name, tmp_path, "test")
    assert sorted(ds.targets) == list(range(200)) and ds.num_classes == 200
    for path, label in ds.samples:
        assert imagenet_wnids()[mask()[label]] == path.parent.name
    with pytest.raises(ScaleshiftError, match="3 classes have readable images"):
        check_dataset(name, root)                               # 197 folders: unreadable only
    shutil.rmtree(root / wnids()[3])
    with pytest.raises(ScaleshiftError, match="1 missing"):
        mask(root)
    with pytest.raises(ScaleshiftError, match="199 class folders, expected 200"):
        build_dataset(name, root)
    for w in wnids():
        if w not in chosen and (root / w).exists():
            shutil.rmtree(root / w)
    report = check_dataset(name, root, num_classes=3)          # a partial copy, declared
    assert report["splits"]["test"]["images"] == 3 and report["classes"] == 3


def test_imagenet_c_tree(tmp_path):
    wnids = ["n01440764", "n01443537"]
    for corruption in CORRUPTIONS:
        for severity in range(1, 6):
            for w in wnids:
                put(tmp_path / corruption / str(severity) / w / "x.JPEG")
    put(tmp_path / "fog" / "3" / wnids[0] / "broken.JPEG", NOT_AN_IMAGE)
    ds = build_dataset("imagenet_c", tmp_path, "fog/3", num_classes=2)
    assert ds.meta == dict(corruption="fog", severity=3) and len(ds) == 3
    report = check_dataset("imagenet_c", tmp_path, num_classes=2)
    assert len(report["splits"]) == 75
    assert all(r["images"] == 2 for r in report["splits"].values())
    assert [s["split"] for s in report["skipped"]] == ["fog/3"]
    with pytest.raises(ScaleshiftError, match="no split 'fog/6'"):
        build_dataset("imagenet_c", tmp_path, "fog/6", num_classes=2)
    with pytest.raises(ScaleshiftError, match=r"corruption/severity folder not found(.|\n)*<wnid>"):
        build_dataset("imagenet_c", tmp_path / "fog", "fog/1")


# --- CIFAR-100, image folders, unreadable images --------------------------------------------

def test_cifar100_missing_or_corrupt(tmp_path):
    with pytest.raises(ScaleshiftError, match=r"cifar-100-python/train(.|\n)*download=True"):
        build_dataset("cifar100", tmp_path, "train")
    for name in ("train", "test", "meta"):
        (tmp_path / "cifar-100-python").mkdir(exist_ok=True)
        (tmp_path / "cifar-100-python" / name).write_bytes(b"junk")
    with pytest.raises(ScaleshiftError, match="could not be loaded"):
        build_dataset("cifar100", tmp_path / "cifar-100-python", "test")


def test_image_folder_and_skipping(tmp_path):
    for split in ("train", "val"):
        for c in ("cat", "dog", "emu"):
            put(tmp_path / split / c / f"{split}.png")
    bad = put(tmp_path / "train" / "cat" / "bad.jpg", TRUNCATED)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    assert get_dataset_spec("folder").check_splits(tmp_path) == ("train", "val")
    ds = build_dataset("image_folder", tmp_path, "train")
    assert ds.classes == ["cat", "dog", "emu"] and len(ds) == 4
    image, label = ds[0]                                     # bad.jpg sorts first: skipped
    assert ds.samples[0][0] == bad and label == 0 and image.mode == "RGB"
    assert [path for path, _ in ds.skipped] == [str(bad)]
    assert ds.skipped[0][1].startswith("corrupt or truncated")
    strict = build_dataset("image_folder", tmp_path, "train", strict=True)
    with pytest.raises(ScaleshiftError, match="unreadable image"):
        strict[0]
    report = check_dataset("image_folder", tmp_path)
    assert report["splits"]["train"] == dict(images=3, files=4, classes=3, skipped=1)
    assert check_dataset("image_folder", tmp_path, decode=False)["skipped"] == []
    put(tmp_path / "val" / "fox" / "x.jpg")
    with pytest.raises(ScaleshiftError, match="not a class of the training split"):
        build_dataset("image_folder", tmp_path, "val")


def test_missing_root_and_bad_options(tmp_path):
    with pytest.raises(ScaleshiftError, match=r"dataset root not found(.|\n)*images\.txt"):
        check_dataset("cub2011", tmp_path / "nowhere")
    with pytest.raises(ScaleshiftError, match="needs a root folder"):
        build_dataset("imagenet")
    with pytest.raises(ScaleshiftError, match="unknown dataset 'imagenet22k'"):
        build_dataset("imagenet22k", tmp_path)
    with pytest.raises(ScaleshiftError, match="does not take option.*protocl"):
        build_dataset("cub2011", tmp_path, protocl="vpt")


@pytest.mark.parametrize("name, options, message", [
    ("digits", dict(seed="abc"), "dataset_options.seed must be an integer in 0.."),
    ("digits", dict(seed=-1), "dataset_options.seed must be an integer in 0.."),
    ("digits", dict(seed=True), "dataset_options.seed must be an integer"),
    ("digits", dict(size=0), "dataset_options.size must be an integer in 8..4096"),
    ("struct_count", dict(canvas=0), "dataset_options.canvas must be an integer in 32..1024"),
    ("digits", dict(strict="maybe"), "dataset_options.strict must be true or false"),
    ("digits", dict(num_classes="x"), "dataset_options.num_classes must be an integer"),
])
def test_bad_option_values_are_named_before_any_work(name, options, message, tmp_path, capsys):
    # these reached numpy or PIL as a ValueError / TypeError traceback, or (canvas=0) built a
    # dataset of empty images
    with pytest.raises(ScaleshiftError, match=message):
        build_dataset(name, split="train", **options)
    key, value = next(iter(options.items()))
    argv = ["train", "builtin/digits_ssf", f"dataset={name}", f"dataset_options.{key}={value}",
            "--validate-only"]
    assert main(argv) == 2                          # train --validate-only says so too
    assert message.split(" must")[0] in capsys.readouterr().err


def test_a_link_to_itself_inside_a_class_folder_is_skipped(tmp_path):
    # os.DirEntry.is_dir() raises ELOOP on it; it once ended `datasets check` in a traceback
    from PIL import Image
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / cls / "0.png")
    os.symlink("loop", tmp_path / "train" / "b" / "loop")
    assert len(build_dataset("folder", tmp_path, split="train")) == 2

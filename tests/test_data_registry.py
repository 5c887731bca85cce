"""The dataset registry, the `datasets` CLI (through argparse) and the per-setting transforms."""
import json

import pytest
from PIL import Image

from scaleshift.data import build_transform, get_dataset_spec, list_datasets, resolve_config
from scaleshift.cli import build_parser, parse_command_line
from scaleshift.errors import ScaleshiftError

FGVC = ["cub2011", "nabirds", "oxford_flowers", "stanford_dogs", "stanford_cars"]
VTAB = {  # VTAB-1k (Zhai et al. 2019): task -> (group, classes)
    "cifar": ("natural", 100), "caltech101": ("natural", 102), "dtd": ("natural", 47),
    "oxford_flowers102": ("natural", 102), "oxford_iiit_pet": ("natural", 37),
    "svhn": ("natural", 10), "sun397": ("natural", 397), "patch_camelyon": ("specialized", 2),
    "eurosat": ("specialized", 10), "resisc45": ("specialized", 45),
    "diabetic_retinopathy": ("specialized", 5), "clevr_count": ("structured", 8),
    "clevr_dist": ("structured", 6), "dmlab": ("structured", 6), "kitti": ("structured", 4),
    "dsprites_loc": ("structured", 16), "dsprites_ori": ("structured", 16),
    "smallnorb_azi": ("structured", 18), "smallnorb_ele": ("structured", 9),
}
OTHERS = ["cifar100", "imagenet", "imagenet_a", "imagenet_r", "imagenet_c", "image_folder"]
BUILTINS = ["fashion_mnist", "digits", "fashion_mnist_c", "pretrain_fractal",
            "pretrain_fashion_rot", "patch_textures", "patch_photos", "patch_medical", "faces",
            "struct_location", "struct_orientation", "struct_count", "struct_distance"]
HIRES = ["fashion_mnist_96", "digits_96", "patch_textures_96", "patch_textures_zoom_96",
         "patch_photos_96", "patch_photos_fine_96", "patch_medical_96", "patch_medical_zoom_96",
         "faces_96",
         "struct_location_96", "struct_orientation_96", "struct_count_96", "struct_distance_96",
         "elpv_defect_96", "elpv_type_96"]


def run(argv):
    args = parse_command_line(build_parser(), argv)   # the CLI's own parsing, errors raised
    return args.func(args)


def test_registry_lists_every_benchmark():
    names = list_datasets()
    assert [n for n in names if n not in HIRES] == (FGVC + [f"vtab_{t}" for t in VTAB] + OTHERS
                                                    + BUILTINS)
    assert sorted(n for n in names if n in HIRES) == sorted(HIRES)
    for task, (group, classes) in VTAB.items():
        spec = get_dataset_spec(f"vtab_{task}")
        assert (spec.group, spec.num_classes) == (group, classes)
    assert [get_dataset_spec(n).num_classes for n in FGVC] == [200, 555, 102, 120, 196]
    assert list_datasets("vtab") == [f"vtab_{t}" for t in VTAB]
    assert list_datasets("fgvc") == FGVC
    assert get_dataset_spec("CUB200").name == "cub2011"
    with pytest.raises(ScaleshiftError, match="unknown dataset group"):
        list_datasets("audio")


def test_cli_lists_names_classes_splits_layouts(capsys):
    assert run(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in FGVC + OTHERS + BUILTINS + HIRES:
        assert f"\n{name} " in out
    assert "vtab_sun397" in out and "397" in out
    assert "images/<split>/000123.jpg <label 0..396>" in out        # the exact NOAH layout
    assert "train_list.mat" in out and "<root>/<corruption>/<severity 1..5>/<wnid>" in out
    assert run(["datasets", "--json", "--group", "robustness"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["imagenet_a", "imagenet_r", "imagenet_c"]
    assert rows[0]["classes"] == 200 and "imagenet-a" in rows[0]["layout"]


def test_cli_check(tmp_path, capsys):
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / split / c / "x.png")
    (tmp_path / "test" / "b" / "broken.png").write_bytes(b"\x89PNG broken")
    assert run(["datasets", "check", "image_folder", "--root", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "classes   2 (expected 2)" in text and "skipped   1 unreadable file" in text
    assert "broken.png" in text and text.rstrip().endswith("OK")
    assert run(["datasets", "check", "image_folder", "--root", str(tmp_path), "--json",
                "--split", "test"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"] == dict(test=dict(images=2, files=3, classes=2, skipped=1))
    assert report["skipped"][0]["path"].endswith("broken.png")
    with pytest.raises(ScaleshiftError, match="unreadable image"):
        run(["datasets", "check", "image_folder", "--root", str(tmp_path), "--strict"])
    with pytest.raises(ScaleshiftError, match="2 class folders, expected 3"):
        run(["datasets", "check", "image_folder", "--root", str(tmp_path), "--num-classes", "3"])
    with pytest.raises(ScaleshiftError, match="needs --root"):
        run(["datasets", "check", "cub2011"])
    assert run(["datasets", "check", "digits", "--opt", "seed=3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["options"] == {"seed": 3} and report["splits"]["train800"]["images"] == 800


def _names(transform):
    return [type(t).__name__ for t in transform.transforms]


def test_transforms_follow_setting_and_backbone():
    vit, convnext = "vit_base_patch16_224.augreg_in21k", "convnext_base.fb_in22k"
    assert resolve_config(vit)["crop_pct"] == 0.9 and resolve_config(vit)["mean"] == (0.5,) * 3
    image = Image.new("RGB", (300, 200), (120, 30, 200))
    vtab = build_transform("vtab", vit, is_training=True)           # direct resize, no aug
    assert _names(vtab)[:2] == ["Resize", "CenterCrop"]
    assert tuple(vtab.transforms[0].size) == (224, 224) and vtab(image).shape == (3, 224, 224)
    assert str(vtab) == str(build_transform("vtab", vit, is_training=False))
    for model, resize in ((vit, 248), (convnext, 256)):             # floor(224 / crop_pct)
        ev = build_transform("cifar", model, is_training=False)
        assert ev.transforms[0].size == resize and _names(ev)[:2] == ["Resize", "CenterCrop"]
        assert ev.transforms[0].interpolation.value == "bicubic"
    mean = build_transform("imagenet", convnext, is_training=False).transforms[-1].mean
    assert [round(float(m), 3) for m in mean] == [0.485, 0.456, 0.406]
    strong = build_transform("cifar", vit, is_training=True)
    names = _names(strong)
    assert names[0] == "RandomResizedCropAndInterpolation" and "RandAugment" in names
    assert strong.transforms[0].scale == (0.08, 1.0) and "ColorJitter" not in names
    assert "RandomErasing" not in names      # the engine erases the batch after mixup
    assert strong.transforms[names.index("RandomHorizontalFlip")].p == 0.5
    fgvc = build_transform("fgvc", vit, is_training=True)
    assert _names(fgvc) == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip",
                            "MaybeToTensor", "Normalize"]
    small = build_transform("imagenet", vit, is_training=True, input_size=32)
    assert small(image).shape == (3, 32, 32)
    with pytest.raises(ScaleshiftError, match="unknown transform setting"):
        build_transform("cutout", vit, is_training=True)

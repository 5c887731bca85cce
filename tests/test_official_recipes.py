"""Every paper recipe runs what the official SSF script runs (issue 13, item 3).

tests/data/official_recipes.yaml holds the EFFECTIVE values of the 45 official training scripts
(flags + train.py defaults + what timm 0.6.5 does with them). Each script maps to one recipe;
the recipe is loaded through `load_recipe` (the validation path `train` uses) and compared key
by key with the official values translated to RunConfig keys. A difference is a mismatch
unless DELIBERATE declares it; a declared difference that is not one is a mismatch too.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scaleshift.config import RunConfig, load_recipe
from scaleshift.data import get_dataset_spec
from scaleshift.data.fgvc import OFFICIAL_SPLITS as FGVC_OFFICIAL_LAYOUT_SPLITS
from scaleshift.methods import get_method

ROOT = Path(__file__).resolve().parents[1]
TABLE = yaml.safe_load((ROOT / "tests/data/official_recipes.yaml").read_text())["scripts"]

# --- which recipe reproduces which script ----------------------------------------------------

FAMILY = {"vit": "vit_b16", "swin": "swin_b", "convnext": "convnext_b", "asmlp": "as_mlp_b"}
MODE = {"train_ssf.sh": "ssf", "train_full.sh": "full", "train_linear_probe.sh": "linear"}
FGVC_RECIPE = {"cub_2011": "cub2011", "nabirds": "nabirds", "oxford_flowers": "oxford_flowers",
               "stanford_cars": "stanford_cars", "stanford_dogs": "stanford_dogs"}
VTAB_RECIPE = {"cifar_100": "cifar", "flowers102": "oxford_flowers102", "pets": "oxford_iiit_pet"}


def group_of(script: str) -> str:
    """cifar100 | imagenet | fgvc | vtab: the setting of an official script path."""
    return {"cifar_100": "cifar100", "imagenet_1k": "imagenet", "fgvc": "fgvc",
            "vtab": "vtab"}[script.split("/")[1]]


def recipe_of(script: str) -> Path:
    family, _, *rest = script.split("/")
    group = group_of(script)
    if group in ("cifar100", "imagenet"):
        name = f"{FAMILY[family]}_{MODE[rest[0]]}"
    elif group == "fgvc":
        name = f"{FGVC_RECIPE[rest[0]]}_{MODE[rest[1]]}"
    else:
        name = f"{VTAB_RECIPE.get(rest[0], rest[0])}_{MODE[rest[1]]}"
    return ROOT / "src" / "scaleshift" / "recipes" / group / f"{name}.yaml"


# --- official value -> the RunConfig value that would run the same thing ---------------------

MODEL = {   # official model name -> the timm name of the same weights (the official SSF scripts' --model names)
    "vit_base_patch16_224_in21k": "vit_base_patch16_224.augreg_in21k",      # augreg IN-21k .npz
    "swin_base_patch4_window7_224_in22k": "swin_base_patch4_window7_224.ms_in22k",
    "convnext_base_in22k": "convnext_base.fb_in22k",                           # convnext_base_22k_224.pth
    "as_base_patch4_window7_224": "as_mlp_base",                               # scaleshift's AS-MLP
}
METHOD = {"ssf": "ssf", "linear_probe": "linear", None: "full"}
DATASET = {"torch/cifar100": "cifar100", "imagenet": "imagenet", "cub2011": "cub2011",
           "nabirds": "nabirds", "oxford_flowers": "oxford_flowers",
           "stanford_cars": "stanford_cars", "stanford_dogs": "stanford_dogs"}
# --no-aug -> vtab (direct resize), --simple-aug -> fgvc (crop + flip); the default RandAugment
# (with crop (0.08, 1) + flip) is scaleshift's cifar / imagenet setting, named after the dataset
AUGMENT = {"no_aug": "vtab", "simple_aug": "fgvc",
           "rand-m9-mstd0.5-inc1": {"cifar100": "cifar", "imagenet": "imagenet"}}
# The official SSF modules (models/*.py): scale ~ N(1, 0.02), shift ~ N(0, 0.02) after every op of
# the paper's insertion points, nothing else changed; scaleshift's SSF options that say the same.
OFFICIAL_SSF = dict(profile="paper", init="normal", init_std=0.02, layers=None, exclude=[],
                    scale=True, shift=True, scalar_scale=False, only_norm=False)
# Only the VPT json layout of an FGVC dataset has a val split; its official layout has these.
# (scaleshift's official FGVC layout reads the <root>/val folder of Flowers and Cars as "test")
FGVC_OFFICIAL_SPLIT = {"train": "train", "test": "test", "val": "test"}


def expected(entry: dict, group: str) -> dict:
    """The official effective values as RunConfig keys (plus num_classes and method options)."""
    augment = AUGMENT[entry["aug"]]
    out = {
        "model": MODEL[entry["model"]],
        "pretrained": True if entry["pretrained"] == "hub" else entry["pretrained"],
        "method": METHOD[entry["tuning_mode"]],
        "dataset": ("vtab_" + Path(entry["data_dir"]).name) if group == "vtab"   # vtab-1k/<task>
                   else DATASET[entry["dataset"]],
        "num_classes": entry["num_classes"],
        "train_split": entry["train_split"], "val_split": None, "retrain_split": None,
        "test_split": entry["eval_split"],
        "augment": augment[group] if isinstance(augment, dict) else augment,
        "batch_size": entry["global_batch"],
        "epochs": entry["epochs"], "warmup_epochs": entry["warmup_epochs"],
        "cooldown_epochs": entry["cooldown_epochs"],
        "opt": entry["opt"], "lr": entry["lr"], "warmup_lr": entry["warmup_lr"],
        "min_lr": entry["min_lr"], "weight_decay": entry["weight_decay"],
        "grad_clip": entry["clip_grad"], "drop_path": entry["drop_path"],
        "label_smoothing": entry["smoothing"], "mixup": entry["mixup"], "cutmix": entry["cutmix"],
        "random_erasing": entry["reprob"], "ema_decay": entry["model_ema_decay"],
        "precision": "fp16" if entry["amp"] else "fp32",    # --amp = CUDA fp16 autocast + GradScaler
        "protocol": "official" if entry["eval_every_epoch"] else "final epoch",
        "seed": f"{entry['seed']} + rank",
    }
    if group == "fgvc":
        out["train_split"] = "official layout: " + FGVC_OFFICIAL_SPLIT[entry["train_split"]]
        out["test_split"] = "official layout: " + FGVC_OFFICIAL_SPLIT[entry["eval_split"]]
    if out["method"] == "ssf":
        out.update({f"method_options.{k}": v for k, v in OFFICIAL_SSF.items()})
        if "ssf_final" in entry:
            out["method_options.convnext_final"] = entry["ssf_final"]   # residual: the official place
    elif out["method"] == "linear":
        out["method_options.whole_head"] = True             # every parameter named head.*
    return out


def actual(cfg: RunConfig, group: str) -> dict:
    """The same keys read from a loaded recipe."""
    spec = get_dataset_spec(cfg.dataset)
    splits = {k: spec.resolve_split(getattr(cfg, k)) if getattr(cfg, k) is not None else None
              for k in ("train_split", "val_split", "retrain_split", "test_split")}
    if group == "fgvc":
        used = {s for s in splits.values() if s is not None}
        layout = "VPT json" if used - set(FGVC_OFFICIAL_LAYOUT_SPLITS) else "layout of data_root"
        splits = {k: f"{layout}: {s}" if s is not None else None for k, s in splits.items()}
    out = {key: getattr(cfg, key) for key in (
        "model", "method", "augment", "batch_size", "epochs", "warmup_epochs", "cooldown_epochs",
        "opt", "lr", "warmup_lr", "min_lr", "weight_decay", "grad_clip", "drop_path",
        "label_smoothing", "mixup", "cutmix", "random_erasing", "ema_decay", "precision", "seed")}
    out.update(splits)
    out["pretrained"] = Path(cfg.pretrained).name if isinstance(cfg.pretrained, str) \
        else cfg.pretrained
    out["dataset"] = spec.name
    out["num_classes"] = spec.num_classes
    out["protocol"] = cfg.protocol if cfg.protocol == "clean" else \
        ("official" if cfg.test_every_epoch else "final epoch")
    options = get_method(cfg.method).resolve_options(cfg.method_options)
    if cfg.method == "ssf":
        # all four backbones are families the paper profile knows, so auto resolves to paper
        options["profile"] = "paper" if options["profile"] == "auto" else options["profile"]
        if not cfg.model.startswith("convnext"):
            options.pop("convnext_final")                  # acts on ConvNeXt only
    out.update({f"method_options.{k}": v for k, v in options.items()})
    return out


# --- the deliberate differences: the ONLY place a recipe may differ from its script ----------

OFFICIAL_TRAIN_SPLIT = object()   # "the official training split" (the recipe must name it)

# (setting or "*", key) -> (the recipe's value, why)
DELIBERATE = {
    ("*", "precision"): ("auto", "bf16 autocast where the GPU or CPU has bf16 (fp32 elsewhere) "
                                 "instead of the official CUDA fp16 AMP with loss scaling; "
                                 "precision=fp16 runs the official AMP"),
    ("*", "seed"): (42, "one seed for all processes (each global batch is split across them, so "
                        "N processes see the samples one process sees); official: 42 + rank"),
    # VTAB-1k: the official code trains on train800val200 and reports its best TEST epoch.
    ("vtab", "protocol"): ("clean", "select the epoch on val200 instead of on the test set"),
    ("vtab", "train_split"): ("train800", "clean stage 1 trains on train800 ..."),
    ("vtab", "val_split"): ("val200", "... and selects the epoch on val200"),
    ("vtab", "retrain_split"): (OFFICIAL_TRAIN_SPLIT, "clean stage 2 retrains on the official "
                                "training set (train800val200) for the selected epochs, tests once"),
    # FGVC: the official code trains on its whole train set (CUB, NABirds, Dogs) or <root>/train
    # folder (Flowers, Cars) and reports its best test (<root>/val) epoch. The clean protocol needs
    # a validation split, which only the VPT json layout has.
    ("fgvc", "protocol"): ("clean", "select the epoch on VPT json val, test that epoch"),
    ("fgvc", "train_split"): ("VPT json: train", "train on VPT json train.json"),
    ("fgvc", "val_split"): ("VPT json: val", "select on VPT json val.json"),
    ("fgvc", "test_split"): ("VPT json: test", "test on VPT json test.json"),
}


def declared(group: str, key: str):
    return DELIBERATE.get((group, key)) or DELIBERATE.get(("*", key))


def compare(script: str) -> list[tuple[str, str, object, object]]:
    """(script, key, official, recipe) for every key where the recipe is not what it must be."""
    group, entry = group_of(script), TABLE[script]
    official = expected(entry, group)
    recipe = actual(load_recipe(recipe_of(script)), group)
    rows = []
    for key in sorted(set(official) | set(recipe)):
        want, got = official.get(key, "<absent>"), recipe.get(key, "<absent>")
        rule = declared(group, key)
        if rule is not None:
            value = official["train_split"] if rule[0] is OFFICIAL_TRAIN_SPLIT else rule[0]
            if want == got or got != value:   # declared but not a difference, or not as declared
                rows.append((script, key, want, f"{got!r} (declared: {value!r})"))
        elif want != got:
            rows.append((script, key, want, got))
    return rows


# every RunConfig key compared must be written in the recipe itself, so that a changed default
# cannot change a paper recipe (retrain_split and test_every_epoch: absent = none / every epoch)
EXPLICIT = {"model", "pretrained", "method", "dataset", "train_split", "val_split", "test_split",
            "augment", "batch_size", "epochs", "warmup_epochs", "cooldown_epochs", "opt", "lr",
            "warmup_lr", "min_lr", "weight_decay", "grad_clip", "drop_path", "label_smoothing",
            "mixup", "cutmix", "random_erasing", "ema_decay", "precision", "protocol", "seed"}


def test_the_table_holds_the_45_official_training_scripts():
    by_setting = {}
    for script in TABLE:
        by_setting.setdefault(tuple(script.split("/")[:2]), []).append(script)
    assert {k: len(v) for k, v in by_setting.items()} == {
        ("vit", "cifar_100"): 3, ("vit", "imagenet_1k"): 3, ("vit", "fgvc"): 5, ("vit", "vtab"): 19,
        ("swin", "cifar_100"): 3, ("swin", "imagenet_1k"): 3, ("convnext", "cifar_100"): 3,
        ("convnext", "imagenet_1k"): 3, ("asmlp", "cifar_100"): 3}
    assert len(TABLE) == 45
    assert sum(not e["verified_official"] for e in TABLE.values()) == 11
    for script, entry in TABLE.items():
        assert entry["source"], script
        assert entry["verified_official"] == (not entry["source"].startswith("fork-derived")), script
        assert entry["global_batch"] == entry["gpus"] * entry["batch_per_gpu"], script
        for key in ("lr", "warmup_lr", "min_lr", "weight_decay", "drop_path", "smoothing", "mixup",
                    "cutmix", "reprob"):
            assert isinstance(entry[key], float), (script, key, entry[key])   # not a YAML string


def test_every_official_script_maps_to_its_own_existing_recipe():
    recipes = {script: recipe_of(script) for script in TABLE}
    missing = [f"{s} -> {p.relative_to(ROOT)}" for s, p in recipes.items() if not p.is_file()]
    assert not missing, "no recipe for:\n" + "\n".join(missing)
    assert len(set(recipes.values())) == 45
    paper = {p for group in ("cifar100", "imagenet", "fgvc", "vtab")
             for p in (ROOT / "src" / "scaleshift" / "recipes" / group).glob("*.yaml")}
    assert paper == set(recipes.values()), sorted(str(p) for p in paper ^ set(recipes.values()))


def test_every_recipe_equals_its_official_script_key_by_key():
    mismatches = [row for script in TABLE for row in compare(script)]
    report = "\n".join(f"{s}: {k}: official {o!r}, recipe {r!r}" for s, k, o, r in mismatches)
    print(f"{len(TABLE)} official scripts compared, {len(mismatches)} mismatched keys")
    assert not mismatches, f"{len(mismatches)} mismatched keys:\n{report}"


def test_every_deliberate_difference_is_a_compared_key_of_some_script():
    for group, key in DELIBERATE:
        scripts = [s for s in TABLE if group in ("*", group_of(s))]
        assert scripts and all(key in expected(TABLE[s], group_of(s)) for s in scripts), (group, key)


def test_the_dataset_class_count_is_the_official_one():
    for script, entry in TABLE.items():
        spec = get_dataset_spec(load_recipe(recipe_of(script)).dataset)
        if spec.num_classes is not None:
            assert spec.num_classes == entry["num_classes"], script


def test_paper_recipes_write_every_compared_key():
    missing = []
    for script in TABLE:
        raw = yaml.safe_load(recipe_of(script).read_text())
        missing += [f"{recipe_of(script).name}: {k}" for k in sorted(EXPLICIT - set(raw))]
        if TABLE[script]["tuning_mode"] == "ssf" and "ssf_final" in TABLE[script]:
            if "convnext_final" not in raw.get("method_options", {}):
                missing.append(f"{recipe_of(script).name}: method_options.convnext_final")
    assert not missing, "\n".join(missing)


def test_recipe_headers_name_their_script_and_the_deliberate_differences():
    for script in TABLE:
        path = recipe_of(script)
        header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        assert script in header, (path.name, "names the official script it reproduces")
        prose = " ".join(header.replace("#", " ").split())   # the header's words, unwrapped
        assert "bf16 autocast where the hardware has bf16 (else fp32)" in prose and "42 + rank" in prose, \
            (path.name, "precision and seed")
        if load_recipe(path).protocol == "clean":
            assert "clean protocol" in header, (path.name, "says it uses the clean protocol")
        if not TABLE[script]["verified_official"]:
            assert "fork" in header, (path.name, "says its values come from a fork copy")


# --- what no recipe key sets: the augmentation setting's train interpolation ---------------


def _train_interpolation(augment: str) -> str:
    """random | bicubic | ...: how scaleshift's train transform of `augment` resizes (ViT-B's
    data config; the four backbones all default to bicubic)."""
    from scaleshift.data.transforms import build_transform
    for step in build_transform(augment, "vit_base_patch16_224.augreg_in21k", is_training=True).transforms:
        mode = getattr(step, "interpolation", None)
        if mode is not None:
            if isinstance(mode, (tuple, list)):
                return "random" if len(mode) > 1 else str(mode[0].value)
            return str(getattr(mode, "value", mode))
    raise AssertionError(f"no resizing step in the {augment} train transform")


def test_the_train_interpolation_is_the_official_one():
    mismatches = []
    for script, entry in TABLE.items():
        ours = _train_interpolation(load_recipe(recipe_of(script)).augment)
        if ours != entry["train_interpolation"]:
            mismatches.append((script, entry["train_interpolation"], ours))
    assert not mismatches, mismatches

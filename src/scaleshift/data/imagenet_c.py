"""ImageNet-C: corruption / severity folders, per-corruption errors, CE and mCE.

    <root>/<corruption>/<severity 1..5>/<wnid>/<image>     15 corruptions x 5 severities

A split is "<corruption>/<severity>", e.g. build_dataset("imagenet_c", root, "fog/3").
Labels are positions in the sorted 1000 ImageNet wnids (as for ImageNet-1K).

Corruption error (Hendrycks & Dietterich 2019), errors as fractions in [0, 1]:
    CE_c = sum_s err(c, s) / sum_s err_AlexNet(c, s)       mCE = mean_c CE_c
The AlexNet reference is given as its mean error per corruption (so sum_s = 5 x mean);
CE and mCE are returned in percent, as papers report them (SSF ViT-B: mCE 41.47).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ScaleshiftError
from .base import DatasetSpec, ImageFiles, layout_error
from .imagenet import imagenet_wnids, wnid_samples

SEVERITIES = (1, 2, 3, 4, 5)
ALEXNET_ERRORS = {   # AlexNet mean top-1 error over the 5 severities (Hendrycks & Dietterich, ICLR 2019)
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948,
    "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572, "fog": 0.819324,
    "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
CORRUPTIONS = tuple(ALEXNET_ERRORS)
SPLITS = tuple(f"{c}/{s}" for c in CORRUPTIONS for s in SEVERITIES)

LAYOUT = """\
<root>/<corruption>/<severity 1..5>/<wnid>/<image>   (as the ImageNet-C tarballs unpack)
  corruptions: """ + ", ".join(CORRUPTIONS) + """
  split names: "<corruption>/<severity>", e.g. gaussian_noise/3"""


def build_imagenet_c(root, split="gaussian_noise/1", *, num_classes=None, strict=False):
    root = Path(root)
    if not root.is_dir():
        raise layout_error("dataset root", root, LAYOUT)
    split_dir = root / split
    if not split_dir.is_dir():
        raise layout_error("corruption/severity folder", split_dir, LAYOUT)
    samples = wnid_samples(split_dir, imagenet_wnids(),
                           1000 if num_classes is None else num_classes, LAYOUT)
    corruption, severity = split.split("/")
    return ImageFiles(samples, 1000, imagenet_wnids(), strict=strict,
                      meta=dict(corruption=corruption, severity=int(severity)))


def _baseline_sums(baseline: dict) -> dict[str, float]:
    """sum over severities of the reference errors: {c: mean} -> 5*mean; {(c, s): e} -> sum."""
    sums: dict[str, float] = {}
    for key, value in baseline.items():
        if isinstance(key, tuple):
            sums[key[0]] = sums.get(key[0], 0.0) + float(value)
        else:
            sums[key] = len(SEVERITIES) * float(value)
    return sums


def corruption_errors(errors: dict, baseline: dict | None = None) -> dict:
    """Per-corruption mean error and CE (percent) from {(corruption, severity): error}.

    `baseline` defaults to AlexNet on ImageNet-C; pass a reference model's errors (keyed by
    corruption -> mean error, or (corruption, severity) -> error) for other corruption sets
    such as fashion-mnist-C. Every baseline corruption needs all 5 severities."""
    ref = _baseline_sums(ALEXNET_ERRORS if baseline is None else baseline)
    by_corruption: dict[str, dict[int, float]] = {}
    for key, err in errors.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ScaleshiftError(f"error keys are (corruption, severity) pairs, got {key!r}")
        corruption, severity = key[0], int(key[1])
        if corruption not in ref:
            raise ScaleshiftError(f"unknown corruption {corruption!r}; expected one of "
                                  f"{', '.join(ref)}")
        if severity not in SEVERITIES:
            raise ScaleshiftError(f"severity must be 1..5, got {severity} ({corruption})")
        if not 0.0 <= float(err) <= 1.0:
            raise ScaleshiftError(f"errors are fractions in [0, 1]; got {err} for {key}")
        by_corruption.setdefault(corruption, {})[severity] = float(err)
    out = {}
    for corruption, total_ref in ref.items():
        got = by_corruption.get(corruption, {})
        missing = [s for s in SEVERITIES if s not in got]
        if missing:
            raise ScaleshiftError(f"{corruption}: no error for severity {missing[0]} "
                                  f"(all {len(SEVERITIES)} severities are needed)")
        total = sum(got.values())
        out[corruption] = dict(mean_error=total / len(SEVERITIES),
                               ce=100.0 * total / total_ref)
    return out


def mce(errors: dict, baseline: dict | None = None) -> float:
    """Mean corruption error in percent: mean over corruptions of CE_c (see module doc)."""
    per = corruption_errors(errors, baseline)
    return sum(v["ce"] for v in per.values()) / len(per)


SPECS = [
    DatasetSpec("imagenet_c", 1000, SPLITS, LAYOUT, "robustness", build_imagenet_c,
                description="ImageNet-C, 15 corruptions x 5 severities; mce() with AlexNet "
                            "reference"),
]

"""Reading image files: the one decoder every dataset, `datasets check` and `predict` use.

    load_rgb(path) -> PIL image, mode RGB, 8 bits per channel
                      or raises UnreadableImage (a ScaleshiftError) with `.kind`, `.detail`, `.fix`

The whole file is decoded (a truncated file fails here, not mid-epoch), then brought to 8-bit RGB
by these rules; nothing is ever clipped, a value the rules cannot map is an error:

* N-bit unsigned integer samples keep their top 8 bits, `value >> (N - 8)` (16-bit: `value >> 8`,
  so 65535 -> 255, 32896 -> 128, 255 -> 0). This is what Pillow itself does when it decodes
  16-bit RGB / RGBA / gray+alpha PNGs and 16-bit RGB TIFFs, so a gray and a colour 16-bit file of
  the same content decode alike. N is the file's real bit depth: TIFF BitsPerSample (a 12-bit
  TIFF arrives as mode I;16 holding 0..4095: N = 12), 16 for 16-bit PNG (I;16) and for PGM/PPM
  with maxval > 255 (Pillow rescales those to 0..65535), 16 for any other I;16 image.
* Signed N-bit samples (TIFF SampleFormat 2, e.g. Pillow's own mode I files, 32-bit) have N - 1
  value bits: `value >> (N - 9)`; a negative value has no standard 8-bit meaning and is an error.
  Unsigned 32-bit TIFFs (SampleFormat 1 or absent), which Pillow reads into signed mode I, are
  reinterpreted as unsigned first. A mode I image from any other format has no known bit depth
  and is an error.
* Float samples (mode F) are taken as 0..1, `round(value * 255)`; a value outside [0, 1] or not
  finite is an error.
* Transparency (RGBA, LA, PA, RGBa, a palette with alpha or a transparent index, gray/RGB with
  a tRNS colour) is composited onto
  white, BACKGROUND: `rgb * alpha + 255 * (1 - alpha)`; dropping the alpha channel instead would
  show whatever colour the transparent pixels happen to store.
* Every other mode (1, L, P, RGB, CMYK, YCbCr, ...) goes through Pillow's `convert("RGB")`.

Failures, by `kind` (KINDS): "not found", "not readable" (permissions, a directory),
"decompression bomb" (more pixels than PIL.Image.MAX_IMAGE_PIXELS: Pillow's warning is an error
here, and the file is refused before its pixels are decoded), "corrupt or truncated" (anything
Pillow cannot decode), "unsupported pixel format" (the value rules above), "not a regular file" (a FIFO
or a device: never opened, so a read cannot block).

Datasets skip such a file and count it (or raise under strict=True); `predict` reads the files a
user named, so it raises: `read_image_for_predict`, and `check_top_k` for its --top-k.
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ScaleshiftError

BACKGROUND = (255, 255, 255)
KINDS = ("not found", "not readable", "decompression bomb", "corrupt or truncated",
         "unsupported pixel format", "not a regular file")
_FIXES = {
    "not found": "restore the file, or remove it from the split",
    "not readable": "check that it is a file you can read (permissions)",
    "decompression bomb": "downscale the image, or if you trust the file raise the limit (now "
                          "{limit} pixels): SCALESHIFT_MAX_IMAGE_PIXELS=N in the environment, "
                          "PIL.Image.MAX_IMAGE_PIXELS from Python",
    "corrupt or truncated": "re-download or re-export the file, or delete it",
    "unsupported pixel format": "convert it to an 8- or 16-bit PNG",
    "not a regular file": "only regular files are read: replace it with the image file",
}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_TIFF_BITS, _TIFF_SAMPLE_FORMAT = 258, 339


class UnreadableImage(ScaleshiftError):
    """An image file that cannot be decoded; `kind` is one of KINDS, `code` its index + 1."""

    def __init__(self, message: str, kind: str = "corrupt or truncated", detail: str = "",
                 fix: str = ""):
        super().__init__(message)
        self.kind, self.detail, self.fix = kind, detail or message, fix

    @property
    def code(self) -> int:
        return KINDS.index(self.kind) + 1

    @property
    def reason(self) -> str:
        """`kind: detail; fix`, without the path."""
        return f"{self.kind}: {self.detail}; {self.fix}"


def _unreadable(path, kind: str, detail: str) -> UnreadableImage:
    fix = _FIXES[kind].format(limit=Image.MAX_IMAGE_PIXELS)
    detail = detail.rstrip(". ")
    return UnreadableImage(f"{path}: {kind}: {detail}; {fix}", kind, detail, fix)


PIXEL_LIMIT_VARIABLE = "SCALESHIFT_MAX_IMAGE_PIXELS"


def apply_pixel_limit() -> None:
    """SCALESHIFT_MAX_IMAGE_PIXELS=N, when set, becomes Pillow's decompression-bomb limit (the
    command line's way to read a large image the user trusts)."""
    value = os.environ.get(PIXEL_LIMIT_VARIABLE)
    if value is None:
        return
    if not value.strip().isdigit() or not 0 < int(value) <= 10**12:
        raise ScaleshiftError(f"{PIXEL_LIMIT_VARIABLE}={value[:40]!r} must be a whole number of "
                              f"pixels in 1..10^12 (e.g. 1000000000); unset it for Pillow's limit")
    Image.MAX_IMAGE_PIXELS = int(value)


def load_rgb(path: str | Path) -> Image.Image:
    """Decode the whole file and return it as 8-bit RGB (rules in the module doc)."""
    apply_pixel_limit()
    try:   # a FIFO or a device would block the read or never end: never opened
        mode = os.stat(path).st_mode
    except OSError:
        mode = None   # missing or unreadable: open() below says which
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise _unreadable(path, "not a regular file", kind)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
        try:
            img.load()
        except BaseException:
            img.close()
            raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _unreadable(path, "decompression bomb", str(exc)) from None
    except FileNotFoundError:
        raise _unreadable(path, "not found", "no such file") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise _unreadable(path, "not readable", exc.strerror or str(exc)) from None
    except Exception as exc:    # Pillow's plugins raise many types for a bad file
        raise _unreadable(path, "corrupt or truncated", f"{type(exc).__name__}: {exc}") from None
    with img:
        try:
            return _to_rgb(img, path)
        except (ValueError, OSError) as exc:   # a mode Pillow cannot convert (UnreadableImage
            if isinstance(exc, UnreadableImage):   # is a ValueError: passed on as it is)
                raise
            raise _unreadable(path, "unsupported pixel format",
                              f"mode {img.mode}: {exc}") from None


def _to_rgb(img: Image.Image, path) -> Image.Image:
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        gray = Image.fromarray(_high_depth_to_uint8(img, path), "L")
        transparent = img.info.get("transparency")
        if isinstance(transparent, int) and mode.startswith("I;16"):   # 16-bit gray tRNS
            alpha = np.where(np.asarray(img) == transparent, 0, 255).astype(np.uint8)
            return _composite(Image.merge("LA", (gray, Image.fromarray(alpha, "L"))))
        return gray.convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info or (
            mode == "P" and img.palette is not None and img.palette.mode == "RGBA"):
        return _composite(img)
    return img.convert("RGB")


def _composite(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _bit_depth(img: Image.Image, path) -> tuple[int, bool]:
    """(bits, signed) of an integer-mode image, from the file where the mode does not say."""
    if img.format == "TIFF" and hasattr(img, "tag_v2"):
        bits = img.tag_v2.get(_TIFF_BITS)
        formats = img.tag_v2.get(_TIFF_SAMPLE_FORMAT)
        bits = int(bits[0] if isinstance(bits, tuple) else bits) if bits else None
        sample_format = int(formats[0] if isinstance(formats, tuple) else formats) \
            if formats else 1
        if bits:
            return bits, sample_format == 2
    if img.mode.startswith("I;16"):
        return 16, img.mode.endswith("S")
    if img.mode == "I" and img.format in ("PNG", "PPM"):     # 16-bit gray (older Pillow: PNG)
        return 16, False
    raise _unreadable(path, "unsupported pixel format",
                      f"32-bit integer pixels from a {img.format or 'unknown'} file, whose bit "
                      f"depth is unknown")


def _high_depth_to_uint8(img: Image.Image, path) -> np.ndarray:
    array = np.asarray(img)
    if img.mode == "F":
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise _unreadable(path, "unsupported pixel format",
                              f"float pixels outside [0, 1] (min {np.nanmin(array):g}, max "
                              f"{np.nanmax(array):g}); floats are read as 0..1")
        return np.floor(array.astype(np.float64) * 255 + 0.5).astype(np.uint8)
    bits, signed = _bit_depth(img, path)
    if img.mode == "I" and not signed and bits == 32:
        array = array.astype(np.int32).view(np.uint32)      # Pillow reads uint32 as int32
    array = array.astype(np.int64)
    if signed:
        if array.min() < 0:
            raise _unreadable(path, "unsupported pixel format",
                              f"signed {bits}-bit pixels with negative values (min "
                              f"{array.min()}), which have no standard 8-bit scale")
        bits -= 1
    if array.max() >= 1 << bits:
        raise _unreadable(path, "unsupported pixel format",
                          f"pixel value {array.max()} does not fit the file's {bits}-bit depth")
    if bits >= 8:
        return (array >> (bits - 8)).astype(np.uint8)
    return np.floor(array * 255 / ((1 << bits) - 1) + 0.5).astype(np.uint8)


# --- predict ---------------------------------------------------------------------------------

def read_image_for_predict(path: str | Path) -> Image.Image:
    """`load_rgb` for an image a user named on the command line: any failure is a
    ScaleshiftError (exit 2) naming the file, the problem and the fix, never a traceback."""
    try:
        return load_rgb(path)
    except UnreadableImage as exc:
        raise ScaleshiftError(f"cannot read image {path}: {exc.reason}") from None


def check_top_k(value) -> int:
    """`predict --top-k`: a whole number >= 1 (above the class count, every class is shown)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ScaleshiftError(f"--top-k must be a whole number >= 1 (how many classes to show "
                              f"per image; e.g. --top-k 5), got {value}")
    return int(value)

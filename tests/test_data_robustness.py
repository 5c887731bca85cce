"""Data that used to be read wrong without a word (issue 13, item 6), each case on tiny files.

* high bit depth: 16-bit gray PNG/TIFF/PGM, 12-bit TIFF, signed/unsigned 32-bit TIFF, float TIFF
  are scaled by their real bit depth (top 8 bits), never clipped; transparency is composited
  onto white (palette, LA, RGBA, gray with tRNS);
* folder walks: symlink loops are not followed, a file reached twice counts once, a file
  reached from two class folders is an error, an empty class folder is named;
* decompression bombs and unreadable files are a per-image skip with a reason (also across
  DataLoader workers), or a ScaleshiftError under strict; `datasets check` counts them by reason;
* `predict` helpers: a bomb or unreadable image and --top-k < 1 are ScaleshiftErrors.
"""
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from scaleshift.data import build_dataset, check_dataset, load_rgb
from scaleshift.data.check import format_report
from scaleshift.errors import ScaleshiftError


# --- tiny files written by hand ------------------------------------------------------------

def _png(width, height, bit_depth, colour_type, rows: np.ndarray, extra: bytes = b"") -> bytes:
    """A PNG with any bit depth / colour type (Pillow cannot write 16-bit RGB(A) PNGs)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _tiff(width, height, bits, data: bytes, sample_format=None) -> bytes:
    """A one-strip grayscale little-endian TIFF with the given BitsPerSample / SampleFormat."""
    entries = [(256, 3, width), (257, 3, height), (258, 3, bits), (259, 3, 1), (262, 3, 1),
               (273, 4, 0), (277, 3, 1), (278, 3, height), (279, 4, len(data))]
    if sample_format is not None:
        entries.append((339, 3, sample_format))
    start = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in sorted(entries):
        value = start if tag == 273 else value
        out += struct.pack("<HHI", tag, kind, 1)
        out += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
    return out + b"\x00\x00\x00\x00" + data


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, Image.Image):
        data.save(path)
    else:
        path.write_bytes(data)
    return path


def _gray(image) -> list[int]:
    """The pixels of an RGB image whose channels are equal, as a flat list."""
    array = np.asarray(image)
    assert image.mode == "RGB" and (array == array[..., :1]).all()
    return array[..., 0].ravel().tolist()


def _jpeg(value=128, size=4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buffer, "JPEG")
    return buffer.getvalue()


VALUES16 = np.array([0, 255, 256, 4369, 32896, 65280, 65535], dtype=np.uint16)
TOP8 = (VALUES16 >> 8).tolist()                      # [0, 0, 1, 17, 128, 255, 255]


# --- 1. high bit depth ----------------------------------------------------------------------

def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
    path = _write(tmp_path / "g16.png", Image.fromarray(VALUES16[None]))
    assert Image.open(path).mode == "I;16"
    assert _gray(load_rgb(path)) == TOP8


def test_16bit_gray_and_colour_png_decode_alike(tmp_path):
    """Pillow keeps the high byte of 16-bit RGB / RGBA / LA PNGs; gray follows the same rule."""
    gray = _write(tmp_path / "g.png", _png(7, 1, 16, 0, VALUES16.astype(">u2")[None]))
    rgb = _write(tmp_path / "rgb.png", _png(7, 1, 16, 2, np.repeat(
        VALUES16.astype(">u2")[None, :, None], 3, axis=2)))
    rgba = np.concatenate([np.repeat(VALUES16.astype(">u2")[None, :, None], 3, axis=2),
                           np.full((1, 7, 1), 65535, ">u2")], axis=2).astype(">u2")
    rgba_path = _write(tmp_path / "rgba.png", _png(7, 1, 16, 6, rgba))
    assert _gray(load_rgb(gray)) == _gray(load_rgb(rgb)) == _gray(load_rgb(rgba_path)) == TOP8


def test_16bit_tiff_and_pgm(tmp_path):
    tif = _write(tmp_path / "g16.tif", Image.fromarray(VALUES16[None]))
    big = _write(tmp_path / "g16b.tif", Image.fromarray(VALUES16.astype(">u2")[None]))
    pgm = _write(tmp_path / "g16.pgm", b"P5\n7 1\n65535\n" + VALUES16.astype(">u2").tobytes())
    assert Image.open(pgm).mode == "I"
    for path in (tif, big, pgm):
        assert _gray(load_rgb(path)) == TOP8, path.name


def test_12bit_tiff_uses_its_bits_per_sample(tmp_path):
    # 12-bit samples packed MSB first: 4095, 2048 -> ff f8 00; Pillow gives mode I;16 0..4095
    path = _write(tmp_path / "g12.tif", _tiff(2, 1, 12, bytes([0xFF, 0xF8, 0x00])))
    assert Image.open(path).mode == "I;16"
    assert _gray(load_rgb(path)) == [255, 128]


def test_32bit_integer_tiffs(tmp_path):
    signed = np.array([0, 1 << 23, 1 << 30, (1 << 31) - 1], dtype=np.int32)
    path = _write(tmp_path / "i32.tif", Image.fromarray(signed[None], "I"))
    assert Image.open(path).mode == "I"
    assert _gray(load_rgb(path)) == [0, 1, 128, 255]                 # 31 value bits
    unsigned = np.array([0, 1 << 24, 1 << 31, 0xFFFFFFFF], dtype="<u4")
    path = _write(tmp_path / "u32.tif", _tiff(4, 1, 32, unsigned.tobytes(), sample_format=1))
    assert _gray(load_rgb(path)) == [0, 1, 128, 255]                 # 32 value bits
    negative = _write(tmp_path / "neg.tif", Image.fromarray(np.array([[5, -5]], np.int32), "I"))
    with pytest.raises(ScaleshiftError, match="negative"):
        load_rgb(negative)


def test_float_tiff(tmp_path):
    path = _write(tmp_path / "f.tif", Image.fromarray(
        np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)))
    assert Image.open(path).mode == "F"
    assert _gray(load_rgb(path)) == [0, 64, 128, 255]
    outside = _write(tmp_path / "f2.tif", Image.fromarray(np.array([[0.0, 2.0]], np.float32)))
    with pytest.raises(ScaleshiftError, match=r"outside \[0, 1\]"):      # never clipped
        load_rgb(outside)


def test_transparency_is_composited_on_white(tmp_path):
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0])
    for x, index in enumerate((0, 1, 2)):
        palette.putpixel((x, 0), index)
    palette.info["transparency"] = 1                                  # index 1 (blue) is clear
    p = _write(tmp_path / "p.png", palette)
    assert np.asarray(load_rgb(p)).reshape(-1, 3).tolist() == [[255, 0, 0], [255, 255, 255],
                                                               [0, 255, 0]]
    la = _write(tmp_path / "la.png", Image.fromarray(
        np.array([[[200, 0], [100, 255], [0, 128]]], np.uint8), "LA"))
    got = _gray(load_rgb(la))
    assert got[:2] == [255, 100] and abs(got[2] - 127) <= 1             # 0 * a + 255 * (1 - a)
    rgba = _write(tmp_path / "rgba.png", Image.fromarray(
        np.array([[[0, 0, 0, 0], [10, 20, 30, 255]]], np.uint8), "RGBA"))
    assert np.asarray(load_rgb(rgba)).reshape(-1, 3).tolist() == [[255, 255, 255], [10, 20, 30]]
    trns = _png(2, 1, 8, 0, np.array([[0, 90]], np.uint8), extra=(
        struct.pack(">I", 2) + b"tRNS" + b"\x00\x00"
        + struct.pack(">I", zlib.crc32(b"tRNS\x00\x00") & 0xFFFFFFFF)))   # gray 0 is clear
    assert _gray(load_rgb(_write(tmp_path / "trns.png", trns))) == [255, 90]
    plain = Image.new("P", (1, 1))
    plain.putpalette([1, 2, 3])
    assert load_rgb(_write(tmp_path / "plain.png", plain)).getpixel((0, 0)) == (1, 2, 3)


def test_datasets_decode_through_load_rgb(tmp_path):
    for c in ("a", "b"):
        _write(tmp_path / "train" / c / "x.png", Image.fromarray(VALUES16[None]))
    ds = build_dataset("image_folder", tmp_path, "train")
    image, _ = ds[0]
    assert _gray(image) == TOP8


# --- 2. folder walks: symlinks -----------------------------------------------------------------

def _class_tree(root, classes=("a", "b"), per_class=4):
    for c in classes:
        for i in range(per_class):
            _write(root / "train" / c / f"{i}.jpg", _jpeg(40 * i))


def test_symlink_loop_is_not_followed(tmp_path):
    _class_tree(tmp_path)
    (tmp_path / "train" / "a" / "loop").symlink_to("..")               # back to train/
    (tmp_path / "train" / "b" / "self").symlink_to(".")
    ds = build_dataset("image_folder", tmp_path, "train")
    assert len(ds) == 8 and ds.targets == [0] * 4 + [1] * 4
    assert [p.name for p, _ in ds.samples] == [f"{i}.jpg" for i in range(4)] * 2


def test_file_reached_twice_counts_once(tmp_path):
    _class_tree(tmp_path, per_class=2)
    a = tmp_path / "train" / "a"
    _write(a / "sub" / "deep.jpg", _jpeg())
    (a / "0_link_to_sub").symlink_to("sub")                            # sorts before sub/
    (a / "00_link.jpg").symlink_to("sub/deep.jpg")                     # sorts before 0.jpg
    external = _write(tmp_path / "elsewhere" / "ext.jpg", _jpeg())
    (a / "ext").symlink_to(external.parent)                           # outside: followed once
    (a / "ext2").symlink_to(external.parent)
    ds = build_dataset("image_folder", tmp_path, "train")
    names = [str(p.relative_to(tmp_path / "train")) for p, _ in ds.samples]
    assert names == ["a/0.jpg", "a/1.jpg", "a/ext/ext.jpg", "a/sub/deep.jpg", "b/0.jpg",
                     "b/1.jpg"]                                      # real paths preferred
    assert ds.targets == [0, 0, 0, 0, 1, 1]


def test_file_reached_from_two_class_folders_is_an_error(tmp_path):
    _class_tree(tmp_path, per_class=2)
    (tmp_path / "train" / "b" / "from_a.jpg").symlink_to("../a/0.jpg")
    with pytest.raises(ScaleshiftError, match=r"(?s)two class folders.*a/0\.jpg.*b/from_a"):
        build_dataset("image_folder", tmp_path, "train")


def test_class_folder_linking_to_the_split_is_an_error(tmp_path):
    _class_tree(tmp_path, per_class=1)
    (tmp_path / "train" / "c").symlink_to(".")
    with pytest.raises(ScaleshiftError, match=r"train/c.*loop"):
        build_dataset("image_folder", tmp_path, "train")


# --- 3. empty class folders ------------------------------------------------------------------

def test_empty_class_folder_is_named(tmp_path):
    _class_tree(tmp_path, classes=("a", "b", "c"), per_class=1)
    for f in (tmp_path / "train" / "b").iterdir():
        f.unlink()
    with pytest.raises(ScaleshiftError, match=r"(?s)class folder \S*train/b holds no images"
                                              r".*delete the folder"):
        build_dataset("image_folder", tmp_path, "train")
    (tmp_path / "train" / "b" / "notes.heic").write_bytes(b"x")
    with pytest.raises(ScaleshiftError, match=r"train/b holds no images.*notes\.heic"):
        build_dataset("image_folder", tmp_path, "train")


def test_empty_class_folder_in_a_held_out_split_is_named(tmp_path):
    _class_tree(tmp_path, per_class=1)
    _write(tmp_path / "val" / "a" / "0.jpg", _jpeg())
    (tmp_path / "val" / "b").mkdir()
    with pytest.raises(ScaleshiftError, match=r"val/b holds no images"):
        build_dataset("image_folder", tmp_path, "val")


# --- 4. decompression bombs and unreadable files ---------------------------------------------

@pytest.fixture
def small_bomb_limit(monkeypatch):
    """Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that: 64 / 128 pixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64)


def _bad_tree(root):
    """train/a: ok, warning-size bomb, error-size bomb, truncated; train/b: ok."""
    _write(root / "train" / "a" / "0_ok.png", Image.new("RGB", (4, 4), (1, 2, 3)))
    _write(root / "train" / "a" / "1_bomb_warn.png", Image.new("RGB", (10, 10)))   # 100 px
    _write(root / "train" / "a" / "2_bomb.png", Image.new("RGB", (12, 12)))        # 144 px
    _write(root / "train" / "a" / "3_cut.jpg", _jpeg(size=16)[:200])
    _write(root / "train" / "b" / "0_ok.png", Image.new("RGB", (4, 4), (4, 5, 6)))


def test_bomb_and_truncated_are_skipped_with_reasons(tmp_path, small_bomb_limit):
    _bad_tree(tmp_path)
    ds = build_dataset("image_folder", tmp_path, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # no warning escapes
        items = [ds[i] for i in range(len(ds))]
    assert [label for _, label in items] == [0, 1, 1, 1, 1]          # next readable image
    assert [(p.split("/")[-1], r.split(":")[0]) for p, r in ds.skipped] == [
        ("1_bomb_warn.png", "decompression bomb"), ("2_bomb.png", "decompression bomb"),
        ("3_cut.jpg", "corrupt or truncated")]
    strict = build_dataset("image_folder", tmp_path, "train", strict=True)
    with pytest.raises(ScaleshiftError, match=r"unreadable image .*1_bomb_warn.*MAX_IMAGE_PIXELS"):
        strict[1]
    with pytest.raises(ScaleshiftError, match=r"unreadable image .*3_cut.*truncated"):
        strict[3]


def test_a_trusted_large_image_is_read_with_the_environment_limit(tmp_path, small_bomb_limit, monkeypatch):
    from scaleshift.data.images import load_rgb
    path = tmp_path / "big.png"
    _write(path, Image.new("RGB", (10, 10)))                         # 100 px, over the 64 limit
    with pytest.raises(ScaleshiftError, match="SCALESHIFT_MAX_IMAGE_PIXELS=N"):
        load_rgb(path)
    monkeypatch.setenv("SCALESHIFT_MAX_IMAGE_PIXELS", "200")
    assert load_rgb(path).size == (10, 10)
    monkeypatch.setenv("SCALESHIFT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ScaleshiftError, match="must be a whole number of pixels"):
        load_rgb(path)


def _stack(batch):
    return [label for _, label in batch]


def test_skips_in_dataloader_workers_reach_the_dataset(tmp_path, small_bomb_limit):
    from scaleshift.data import skipped_counts
    _bad_tree(tmp_path)
    ds = build_dataset("image_folder", tmp_path, "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=_stack)
    assert sum(len(b) for b in loader) == 5
    assert [p.split("/")[-1] for p, _ in ds.skipped] == ["1_bomb_warn.png", "2_bomb.png",
                                                         "3_cut.jpg"]
    assert ds.skipped[0][1] == "decompression bomb"                 # the kind, from a worker
    subset = torch.utils.data.Subset(ds, [0, 1, 4])
    assert skipped_counts(dict(train=ds, part=subset, val=None)) == dict(train=3, part=1)


def test_missing_file_is_a_skip(tmp_path):
    from scaleshift.data.base import ImageFiles
    good = _write(tmp_path / "ok.png", Image.new("RGB", (2, 2)))
    ds = ImageFiles([(tmp_path / "gone.png", 0), (good, 1)], 2)
    assert ds[0][1] == 1 and ds.skipped == [(str(tmp_path / "gone.png"), ds.skipped[0][1])]
    assert ds.skipped[0][1].startswith("not found")


# --- 5. datasets check: skipped by reason, same decoder ----------------------------------------

def test_check_reports_skips_by_reason(tmp_path, small_bomb_limit):
    _bad_tree(tmp_path)
    _write(tmp_path / "train" / "b" / "1_float.tif",
           Image.fromarray(np.array([[0.0, 3.0]], np.float32)))
    _write(tmp_path / "train" / "b" / "2_16bit.png", Image.fromarray(VALUES16[None]))  # fine
    report = check_dataset("image_folder", tmp_path)
    assert report["splits"]["train"]["skipped"] == 4
    assert report["skipped_by_reason"] == {"train": {"decompression bomb": 2,
                                                     "corrupt or truncated": 1,
                                                     "unsupported pixel format": 1}}
    assert {item["kind"] for item in report["skipped"]} == set(report["skipped_by_reason"]["train"])
    text = format_report(report)
    assert ("skipped   4 unreadable files (2 decompression bomb, 1 corrupt or truncated, "
            "1 unsupported pixel format)") in text
    with pytest.raises(ScaleshiftError, match="MAX_IMAGE_PIXELS"):
        check_dataset("image_folder", tmp_path, strict=True)


# --- 4b. predict helpers (cli.py calls them) --------------------------------------------------

def test_predict_image_reader(tmp_path, small_bomb_limit):
    from scaleshift.data.images import read_image_for_predict
    bomb = _write(tmp_path / "bomb.png", Image.new("RGB", (12, 12)))
    with pytest.raises(ScaleshiftError, match=r"cannot read image .*bomb\.png.*MAX_IMAGE_PIXELS"):
        read_image_for_predict(bomb)
    with pytest.raises(ScaleshiftError, match=r"cannot read image .*nothere\.png.*not found"):
        read_image_for_predict(tmp_path / "nothere.png")
    with pytest.raises(ScaleshiftError, match="cannot read image"):
        read_image_for_predict(_write(tmp_path / "junk.png", b"not a png"))
    g16 = _write(tmp_path / "g16.png", Image.fromarray(VALUES16[None]))
    assert _gray(read_image_for_predict(g16)) == TOP8


@pytest.mark.parametrize("value", [-1, 0, -100])
def test_predict_top_k_must_be_positive(value):
    from scaleshift.data.images import check_top_k
    with pytest.raises(ScaleshiftError, match=r"--top-k must be .*1.*got " + str(value)):
        check_top_k(value)


def test_predict_top_k_accepts_positive():
    from scaleshift.data.images import check_top_k
    assert check_top_k(1) == 1 and check_top_k(1000) == 1000


def test_palette_with_alpha_in_the_palette(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 0, 40, 50, 60, 255], rawmode="RGBA")
    image.putpixel((1, 0), 1)
    assert "transparency" not in image.info and image.palette.mode == "RGBA"
    assert np.asarray(_to_rgb_in_memory(image)).reshape(-1, 3).tolist() == [[255, 255, 255],
                                                                            [40, 50, 60]]


def _to_rgb_in_memory(image):
    from scaleshift.data.images import _to_rgb
    return _to_rgb(image, "<memory>")


def test_link_from_an_outside_class_folder_back_to_the_split_is_a_loop(tmp_path):
    _class_tree(tmp_path, per_class=2)
    outside = tmp_path / "store" / "c"
    _write(outside / "0.jpg", _jpeg())
    (outside / "up").symlink_to(tmp_path / "train")                  # back to the split
    (tmp_path / "train" / "c").symlink_to(outside)
    ds = build_dataset("image_folder", tmp_path, "train")
    assert ds.classes == ["a", "b", "c"] and ds.targets == [0, 0, 1, 1, 2]

"""Checks of every file of a folder dataset, [data] bad_files, 16-bit images and the pixel-mode rules.

Real small files in tmp folders: PNGs written byte by byte (16-bit, every row filter, crafted headers),
Pillow's own writers for the other formats.
"""
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_core.data import checks, make_dataset
from efficient_vdvae_core.data.decode import MAX_PIXELS, UnreadableImageError, decode_image
from efficient_vdvae_core.errors import UserError
from tests.core.test_data import data_cfg, one_line_error, rng, write_image, write_npz

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> PNG colour type (gray, gray+alpha, RGB, RGBA)


# --- a PNG writer: any bit depth, every row filter ---------------------------------------------------

def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def filtered(rows, bpp):
    """PNG scanlines: row y is written with filter type y % 5 (None, Sub, Up, Average, Paeth)."""
    out, prior = [], np.zeros(rows.shape[1], np.int64)
    for y, raw in enumerate(rows.astype(np.int64)):
        a = np.concatenate([np.zeros(bpp, np.int64), raw[:-bpp]])
        c = np.concatenate([np.zeros(bpp, np.int64), prior[:-bpp]])
        predicted = [0, a, prior, (a + prior) // 2, paeth(a, prior, c)][y % 5]
        out.append(bytes([y % 5]) + ((raw - predicted) % 256).astype(np.uint8).tobytes())
        prior = raw
    return b"".join(out)


def png_bytes(samples, bit_depth=16, trns=None, size=None):
    """A PNG of `samples` (H, W) or (H, W, C) at `bit_depth`; `size` overrides the (width, height) in IHDR."""
    samples = samples if samples.ndim == 3 else samples[..., None]
    h, w, c = samples.shape
    big_endian = samples.astype(">u2" if bit_depth == 16 else np.uint8)
    rows = np.ascontiguousarray(big_endian).view(np.uint8).reshape(h, -1)
    width, height = size or (w, h)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, COLOR_TYPES[c], 0, 0, 0)
    extra = chunk(b"tRNS", struct.pack(f">{len(trns)}H", *trns)) if trns else b""
    idat = zlib.compress(filtered(rows, max(1, c * bit_depth // 8)))
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def samples16(shape, seed=0):
    values = np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)
    values.flat[:6] = [0, 65535, 128, 129, 32896, 33024]  # extremes, either side of midpoints, v >> 8 != round
    return values


def expected8(values):
    return np.round(values / 257).astype(np.uint8)


def good_folder(folder, n=6, size=(16, 16)):
    for k in range(n):
        write_image(folder / f"{k:02d}.png", size, seed=k)


def png_file(path, seed=0, size=(24, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, size, seed=seed)
    return path.read_bytes()


# --- bad files: each kind is named with its reason ----------------------------------------------------

def make_bad(folder, kind):
    """Write one bad file of `kind` into `folder`; returns its name and a phrase of its reason."""
    if kind == "empty":
        (folder / "e.png").write_bytes(b"")
        return "e.png", "0 bytes"
    if kind == "truncated":
        data = png_file(folder / "t.png")
        (folder / "t.png").write_bytes(data[:len(data) * 3 // 5])
        return "t.png", "truncated"
    if kind == "corrupt":
        (folder / "c.png").write_bytes(os.urandom(300))
        return "c.png", "not a readable image"
    if kind == "symlink":
        os.symlink(folder.parent / "nowhere.png", folder / "s.png")
        return "s.png", "broken symlink"
    if kind == "bomb":
        (folder / "b.png").write_bytes(png_bytes(np.zeros((2, 2), np.uint8), 8, size=(100_000, 100_000)))
        return "b.png", f"limit of {MAX_PIXELS} pixels"
    if kind == "large":  # between Pillow's warning and error thresholds: refused by us, without a warning
        (folder / "l.png").write_bytes(png_bytes(np.zeros((2, 2), np.uint8), 8, size=(10_000, 10_000)))
        return "l.png", "10000x10000 = 100000000 pixels"
    if kind == "float":
        Image.fromarray(np.ones((8, 8), np.float32), "F").save(folder / "f.tif")
        return "f.tif", "mode 'F'"
    if kind == "text":
        (folder / "notes.txt").write_text("hello")
        return "notes.txt", "not an image file name"
    raise ValueError(kind)


BAD_KINDS = ["empty", "truncated", "corrupt", "symlink", "bomb", "large", "float", "text"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_bad_file_is_refused_by_name(tmp_path, kind):
    good_folder(tmp_path / "train")
    name, reason = make_bad(tmp_path / "train", kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow decompression-bomb warning either
        with pytest.raises(UserError) as excinfo:
            make_dataset(data_cfg("custom", tmp_path), "train", seed=0)
    one_line_error(excinfo, "1 unreadable file in [data] train_data_path", tmp_path / "train", f"{name} (",
                   reason, "bad_files = 'skip'")


def test_the_error_names_the_first_files_and_counts_the_rest(tmp_path):
    folder = tmp_path / "train"
    good_folder(folder, n=30)
    kinds = ["empty", "truncated", "corrupt", "symlink", "bomb"]
    names = sorted(make_bad(folder, kind)[0] for kind in kinds)
    with pytest.raises(UserError) as excinfo:
        make_dataset(data_cfg("ffhq", tmp_path), "train", seed=0)
    message = str(excinfo.value)
    one_line_error(excinfo, "5 unreadable files in [data] train_data_path", *names[:3], "and 2 more",
                   "set [data] bad_files = 'skip' to leave them out")
    assert names[3] not in message and names[4] not in message


def test_skip_leaves_out_exactly_the_bad_files_deterministically(tmp_path, capsys):
    for part in ("train", "val"):
        good_folder(tmp_path / part, n=8)
        for kind in ("empty", "truncated", "symlink"):
            make_bad(tmp_path / part, kind)
    (tmp_path / "clean").mkdir()
    for k in range(8):
        (tmp_path / "clean" / f"{k:02d}.png").write_bytes((tmp_path / "train" / f"{k:02d}.png").read_bytes())
    cfg = data_cfg("celebA", tmp_path, bad_files="skip", target_res=8)
    clean = data_cfg("celebA", tmp_path, target_res=8, train_data_path=str(tmp_path / "clean"))
    good = [f"{k:02d}.png" for k in range(8)]
    assert make_dataset(cfg, "encode", seed=0).names == good
    val = [make_dataset(cfg, "val", seed=s).names for s in (3, 3, 4)]
    assert val[0] == val[1] and sorted(val[0]) == good and val[0] != val[2]
    for seed in (3, 4):  # the same split as a folder holding only the good files
        assert (make_dataset(cfg, "div_stats", seed=seed, subset_ratio=0.5).names
                == make_dataset(clean, "div_stats", seed=seed, subset_ratio=0.5).names)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err  # one report per folder, however often it is opened
    assert all(line.startswith("warning: [data] bad_files = 'skip': leaving out 3 unreadable files") for line in err)
    assert "e.png (0 bytes)" in err[0] and "s.png (broken symlink)" in err[0] and "train_data_path" in err[0]


def test_all_files_bad_is_refused_even_when_skipping(tmp_path):
    (tmp_path / "train").mkdir()
    make_bad(tmp_path / "train", "empty")
    make_bad(tmp_path / "train", "corrupt")
    with pytest.raises(UserError) as excinfo:
        make_dataset(data_cfg("custom", tmp_path, bad_files="skip"), "train", seed=0)
    one_line_error(excinfo, "all 2 files", "are unreadable", "c.png", "e.png")


def test_verdicts_are_remembered_until_a_file_changes(tmp_path, monkeypatch):
    good_folder(tmp_path / "train", n=5)
    calls = []
    check = checks.image_file_problem
    monkeypatch.setattr(checks, "image_file_problem", lambda path, size: calls.append(path) or check(path, size))
    cfg = data_cfg("custom", tmp_path)
    make_dataset(cfg, "train", seed=0)
    make_dataset(cfg, "encode", seed=0)
    assert len(calls) == 5
    png_file(tmp_path / "train" / "02.png", seed=9, size=(20, 20))
    make_dataset(cfg, "train", seed=0)
    assert len(calls) == 6 and calls[-1].endswith("02.png")


# --- files that pass the checks and fail when decoded ---------------------------------------------------

def damage_inside(path):
    """Zero a run of bytes inside the IDAT data: header and IEND intact, decoding fails."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 200
    data[start:start + 200] = bytes(200)
    path.write_bytes(bytes(data))


def test_damage_inside_a_file_is_one_line_when_read(tmp_path):
    good_folder(tmp_path / "train", n=4, size=(32, 32))
    damage_inside(tmp_path / "train" / "01.png")
    write_image(tmp_path / "train" / "02.jpg", (64, 64), seed=5)
    jpeg = (tmp_path / "train" / "02.jpg").read_bytes()
    (tmp_path / "train" / "02.jpg").write_bytes(jpeg[:len(jpeg) // 2])        # truncated JPEG: no end check
    train = make_dataset(data_cfg("custom", tmp_path, target_res=16), "train", seed=0)
    assert train.names == ["00.png", "01.png", "02.jpg", "02.png", "03.png"]
    for index, name, reason in ((1, "01.png", "broken data stream"), (2, "02.jpg", "truncated")):
        with pytest.raises(UnreadableImageError) as excinfo:
            train.load(index, rng(0))
        one_line_error(excinfo, tmp_path / "train" / name, "not a readable image", reason)


def test_skip_reads_the_next_image_in_training_and_refuses_in_encoding(tmp_path, capsys):
    good_folder(tmp_path / "train", n=4, size=(32, 32))
    damage_inside(tmp_path / "train" / "01.png")
    damage_inside(tmp_path / "train" / "02.png")
    cfg = data_cfg("custom", tmp_path, target_res=16, bad_files="skip")
    train = make_dataset(cfg, "train", seed=0)
    assert len(train) == 4                                                  # the checks passed them all
    assert np.array_equal(train.raw(1), train.raw(3)) and np.array_equal(train.raw(2), train.raw(3))
    train.raw(1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "01.png" in err[0] and "reading 03.png in its place" in err[0]
    with pytest.raises(UnreadableImageError):
        make_dataset(cfg, "encode", seed=0).raw(1)


@pytest.mark.parametrize("policy", ["refuse", "skip"])
def test_decoded_cache_lists_or_skips_files_that_fail_to_decode(tmp_path, policy):
    good_folder(tmp_path / "train", n=5, size=(32, 32))
    damage_inside(tmp_path / "train" / "03.png")
    cfg = data_cfg("custom", tmp_path, target_res=8, decoded_cache=True, bad_files=policy)
    if policy == "refuse":
        with pytest.raises(UserError) as excinfo:
            make_dataset(cfg, "train", seed=0)
        one_line_error(excinfo, "1 unreadable file", "03.png (fails to decode: broken data stream")
        assert not list((tmp_path / "cache" / "decoded").iterdir())             # no partial cache left
    else:
        train = make_dataset(cfg, "train", seed=0)
        assert train.names == ["00.png", "01.png", "02.png", "04.png"]
        assert np.array_equal(train.raw(3), decode_image(tmp_path / "train" / "04.png", 8, 3))


# --- ImageNet .npz folders ------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["refuse", "skip"])
def test_imagenet_bad_batches(tmp_path, policy):
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    folder = tmp_path / "train"
    write_npz(folder / "a.npz", images[:3])
    write_npz(folder / "d.npz", images[3:])
    (folder / "b.npz").write_bytes(b"")
    os.symlink(tmp_path / "gone.npz", folder / "c.npz")
    cfg = data_cfg("imagenet", tmp_path, bad_files=policy)
    if policy == "refuse":
        with pytest.raises(UserError) as excinfo:
            make_dataset(cfg, "train", seed=0)
        one_line_error(excinfo, "2 unreadable files", "b.npz (0 bytes)", "c.npz (broken symlink)")
    else:
        train = make_dataset(cfg, "train", seed=0)
        assert len(train) == 6 and np.array_equal(train.raw(4), images[4])


# --- 16-bit images and the pixel-mode rules -------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_gray_png_is_scaled_not_clipped(tmp_path, channels):
    values = samples16((8, 8))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "g.png").write_bytes(png_bytes(values))
    assert Image.open(tmp_path / "train" / "g.png").mode == "I;16"
    raw = make_dataset(data_cfg("custom", tmp_path, target_res=8, channels=channels), "train", seed=0).raw(0)
    assert raw.shape == (8, 8, channels)
    for c in range(channels):
        assert np.array_equal(raw[..., c], expected8(values))


def test_16bit_rgb_and_rgba_pngs_use_all_16_bits(tmp_path):
    rgb, rgba = samples16((9, 9, 3), seed=1), samples16((9, 9, 4), seed=2)
    rgba[..., 3] = 65535
    rgba[0, :3, 3] = [0, 32768, 65535]
    (tmp_path / "rgb.png").write_bytes(png_bytes(rgb))
    (tmp_path / "rgba.png").write_bytes(png_bytes(rgba))
    out = decode_image(tmp_path / "rgb.png", 9, 3)
    assert np.array_equal(out, expected8(rgb))
    assert not np.array_equal(out, (rgb >> 8).astype(np.uint8))  # what Pillow alone gives: its high bytes
    out = decode_image(tmp_path / "rgba.png", 9, 3).astype(np.int64)
    colour, alpha = expected8(rgba[..., :3]).astype(np.int64), expected8(rgba[..., 3]).astype(np.int64)
    assert np.array_equal(out, (colour * alpha[..., None] + 127) // 255)  # composited over black
    assert not out[0, 0].any() and np.array_equal(out[0, 2], colour[0, 2])


def test_16bit_gray_alpha_and_transparent_colour(tmp_path):
    la = samples16((8, 8, 2), seed=3)
    (tmp_path / "la.png").write_bytes(png_bytes(la))
    out = decode_image(tmp_path / "la.png", 8, 1)[..., 0].astype(np.int64)
    gray, alpha = expected8(la[..., 0]).astype(np.int64), expected8(la[..., 1]).astype(np.int64)
    assert np.array_equal(out, (gray * alpha + 127) // 255)
    values = samples16((8, 8), seed=4)
    values[3, 3] = 1000
    (tmp_path / "t.png").write_bytes(png_bytes(values, trns=(1000,)))
    out = decode_image(tmp_path / "t.png", 8, 1)[..., 0]
    assert out[3, 3] == 0 and np.array_equal(np.delete(out.ravel(), 27), np.delete(expected8(values).ravel(), 27))


def test_eight_bit_modes(tmp_path):
    rgba = np.random.default_rng(5).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    composited = (rgba[..., :3].astype(np.int64) * rgba[..., 3:] + 127) // 255
    assert np.array_equal(decode_image(tmp_path / "rgba.png", 8, 3), composited)
    luma = np.asarray(Image.fromarray(composited.astype(np.uint8)).convert("L"))
    assert np.array_equal(decode_image(tmp_path / "rgba.png", 8, 1)[..., 0], luma)
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "p.png", transparency=0)
    out = decode_image(tmp_path / "p.png", 8, 3)
    assert not out[0, 0].any() and out[0, 1].tolist() == [200, 100, 50]
    Image.new("CMYK", (8, 8), (100, 50, 0, 60)).save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(decode_image(tmp_path / "cmyk.jpg", 8, 3).astype(int) - [119, 157, 195]).max() <= 2
    bits = Image.new("1", (8, 8), 0)
    bits.putpixel((1, 1), 1)
    bits.save(tmp_path / "bits.png")
    out = decode_image(tmp_path / "bits.png", 8, 3)
    assert out[1, 1].tolist() == [255, 255, 255] and out.sum() == 3 * 255
    Image.fromarray(np.full((8, 8), 70000, np.int32), "I").save(tmp_path / "wide.tif")
    with pytest.raises(UnreadableImageError) as excinfo:
        decode_image(tmp_path / "wide.tif", 8, 1)
    one_line_error(excinfo, "wide.tif", "outside the 16-bit range")


def test_16bit_rgb_tiff_uses_all_16_bits(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    for byteorder in ("<", ">"):
        rgb = samples16((6, 6, 3), seed=6)
        tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb", byteorder=byteorder)
        assert np.array_equal(decode_image(tmp_path / "rgb.tif", 6, 3), expected8(rgb))


def test_a_complete_decoded_cache_is_not_checked_again(tmp_path, monkeypatch):
    good_folder(tmp_path / "train", n=4)
    cfg = data_cfg("custom", tmp_path, target_res=8, decoded_cache=True)
    first = make_dataset(cfg, "train", seed=0)
    checks._verdicts.clear()
    monkeypatch.setattr(checks, "image_file_problem", lambda path, size: pytest.fail("checked again"))
    again = make_dataset(cfg, "train", seed=0)
    assert again.names == first.names and np.array_equal(again.raw(2), first.raw(2))
    png_file(tmp_path / "train" / "04.png")                               # a new file: a new cache, checked
    with pytest.raises(pytest.fail.Exception):
        make_dataset(cfg, "train", seed=0)

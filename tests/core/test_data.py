"""Dataset readers and splits on tiny files in each dataset's real on-disk format."""
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_core.data import SPLITS, make_dataset
from efficient_vdvae_core.data import embedded
from efficient_vdvae_core.data.stores import heldout_halves
from efficient_vdvae_core.errors import UserError
from tests.core.data_writers import (cifar_batch, data_cfg, one_line_error, rng, write_cifar, write_idx,  # noqa: F401
                                     write_image, write_mnist, write_npz)


# --- binarized MNIST -----------------------------------------------------------------------------------

def test_mnist_splits_shapes_and_binarisation(tmp_path):
    train, test = write_mnist(tmp_path / "cache")
    cfg = data_cfg("binarized_mnist", tmp_path, channels=1)
    sets = {s: make_dataset(cfg, s, seed=3, subset_ratio=0.5) for s in SPLITS}
    assert {s: len(d) for s, d in sets.items()} == {"train": 20, "encode": 20, "div_stats": 10, "val": 5, "test": 5}
    val_idx, test_idx = heldout_halves(10)
    assert sorted(sets["val"].names) == sorted(f"binarized_mnist_test_{i}" for i in val_idx)
    assert sets["test"].names == [f"binarized_mnist_test_{i}" for i in test_idx]
    assert sets["encode"].names == [f"binarized_mnist_{i}" for i in range(20)]
    probs = sets["train"].raw(4)
    assert probs.dtype == np.float32 and probs.shape == (32, 32, 1)
    np.testing.assert_allclose(probs[2:30, 2:30, 0], train[4] / 255, rtol=1e-6)
    for split, ds in sets.items():
        x = ds.load(0, rng(3, 0, 0))
        assert x.shape == (32, 32, 1) and x.dtype == np.float32
        assert set(np.unique(x)) <= {0.0, 1.0} and not x[:2].any() and not x[:, 30:].any()
    train_draws = [sets["train"].load(1, rng(3, e, 1)) for e in range(2)]
    assert not np.array_equal(*train_draws)                              # dynamic in training
    again = make_dataset(cfg, "val", seed=3)
    for split in ("val", "test", "div_stats", "encode"):                  # fixed everywhere else
        ds = sets[split]
        assert np.array_equal(ds.load(0, rng(0)), ds.load(0, rng(1)))
    assert np.array_equal(sets["val"].load(2), again.load(2))
    other_seed = make_dataset(cfg, "test", seed=4)
    assert np.array_equal(sets["test"].load(1), other_seed.load(1))       # same test set for every run


def test_mnist_malformed_file(tmp_path):
    write_mnist(tmp_path / "cache")
    bad = tmp_path / "cache" / "mnist" / "t10k-images-idx3-ubyte"
    bad.write_bytes(struct.pack(">IIII", 2049, 10, 28, 28))
    with pytest.raises(UserError) as excinfo:
        make_dataset(data_cfg("binarized_mnist", tmp_path, channels=1), "test", seed=0)
    one_line_error(excinfo, bad)


# --- CIFAR-10 ------------------------------------------------------------------------------------------

def test_cifar10_bits_flips_and_splits(tmp_path):
    train, test = write_cifar(tmp_path / "cache" / "cifar-10" / "cifar-10-batches-py")
    cfg = data_cfg("cifar-10", tmp_path, num_bits=5.0)
    ds = make_dataset(cfg, "train", seed=0)
    assert len(ds) == 20 and np.array_equal(ds.raw(7), train[7])
    x = ds.load(0, rng(0, 0, 0))                               # image 0 is all 255
    assert x.dtype == np.float32 and np.allclose(x, (248 - 127.5) / 127.5)
    levels = (np.arange(32) * 8 - 127.5) / 127.5
    values = np.unique(np.stack([ds.load(i, rng(0, 0, i)) for i in range(20)]))
    assert np.isin(values.round(6), levels.astype(np.float32).round(6)).all()
    reduced = (np.floor(train[3] / 8.0) * 8 - 127.5) / 127.5
    outs = [ds.load(3, rng(0, e, 3)) for e in range(16)]
    flipped = [np.allclose(o, reduced[:, ::-1]) for o in outs]
    assert any(flipped) and not all(flipped) and all(f or np.allclose(o, reduced) for f, o in zip(flipped, outs))
    for split in ("test", "val", "encode", "div_stats"):
        other = make_dataset(cfg, split, seed=0, subset_ratio=0.3)
        raw = other.raw(0).astype(np.float32)
        expected = (np.floor(raw / 8) * 8 - 127.5) / 127.5
        assert all(np.allclose(other.load(0, rng(0, e, 0)), expected) for e in range(8))
    test_set, val_set = make_dataset(cfg, "test", seed=0), make_dataset(cfg, "val", seed=0)
    assert len(test_set) == len(val_set) == 5 and not set(test_set.names) & set(val_set.names)
    assert np.array_equal(test_set.raw(0), test[heldout_halves(10)[1][0]])


def test_cifar10_malformed_batch(tmp_path):
    folder = tmp_path / "cache" / "cifar-10" / "cifar-10-batches-py"
    write_cifar(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"labels": [1, 2]}, f, protocol=2)
    with pytest.raises(UserError) as excinfo:
        make_dataset(data_cfg("cifar-10", tmp_path), "test", seed=0)
    one_line_error(excinfo, folder / "test_batch", "'data'")


# --- ImageNet ------------------------------------------------------------------------------------------

def test_imagenet_npz_folders(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (13, 32, 32, 3), dtype=np.uint8)
    write_npz(tmp_path / "train" / "train_data_batch_1.npz", images[:6], labels=np.arange(6), mean=np.zeros(3))
    write_npz(tmp_path / "train" / "train_data_batch_2.npz", images[6:10], labels=np.arange(4))
    write_npz(tmp_path / "val" / "val_data.npz", images[10:], labels=np.arange(3))
    for cached in (False, True):
        cfg = data_cfg("imagenet", tmp_path, val_data_path=str(tmp_path / "val"),
                       synthesis_data_path=str(tmp_path / "val"), decoded_cache=cached)
        train = make_dataset(cfg, "encode", seed=0)
        assert len(train) == 10 and np.array_equal(train.raw(7), images[7]) and train.names[7] == "imagenet_7"
        assert len(make_dataset(cfg, "test", seed=0)) == 3
        val = make_dataset(cfg, "val", seed=0, n_samples=2)
        assert len(val) == 2 and val.load(0).shape == (32, 32, 3)
    assert list((tmp_path / "cache" / "decoded").glob("imagenet-train-32x32x3-*.npy"))
    with pytest.raises(UserError) as excinfo:
        make_dataset(data_cfg("imagenet", tmp_path, target_res=64), "train", seed=0)
    one_line_error(excinfo, "train_data_batch_1.npz", "target_res = 64")


@pytest.mark.parametrize("problem", ["no_data_key", "not_npz", "bad_zip", "missing", "empty"])
def test_imagenet_errors(tmp_path, problem):
    folder = tmp_path / "train"
    images = np.zeros((2, 32, 32, 3), np.uint8)
    if problem == "no_data_key":
        folder.mkdir()
        np.savez(folder / "x.npz", labels=np.arange(2))
    elif problem == "not_npz":
        write_npz(folder / "a.npz", images)
        (folder / "notes.txt").write_text("hello")
    elif problem == "bad_zip":
        folder.mkdir()
        (folder / "a.npz").write_bytes(b"not a zip")
    elif problem == "empty":
        folder.mkdir()
    with pytest.raises(UserError) as excinfo:
        make_dataset(data_cfg("imagenet", tmp_path), "train", seed=0)
    one_line_error(excinfo, folder)


# --- folders of images: celebA, celebAHQ, ffhq, custom -------------------------------------------------

def make_folders(root):
    """The layouts the scripts produce (flat folders) plus nested, grayscale and non-square files."""
    pixels = {"a.png": write_image(root / "train" / "a.png", (40, 40)),
              "b.jpg": write_image(root / "train" / "b.jpg", (50, 30), seed=1),
              "c.png": write_image(root / "train" / "c.png", (32, 32), mode="L", seed=2),
              "sub/d.bmp": write_image(root / "train" / "sub" / "d.bmp", (64, 48), seed=3)}
    (root / "train" / ".hidden").write_text("ignored")
    for part, count in (("val", 4), ("test", 3)):
        for k in range(count):
            write_image(root / part / f"{k:03d}.png", (36, 36), seed=10 + k)
    return pixels


@pytest.mark.parametrize("source", ["celebA", "celebAHQ", "ffhq", "custom"])
def test_folder_sources(tmp_path, source):
    pixels = make_folders(tmp_path)
    cfg = data_cfg(source, tmp_path, target_res=16)
    encode = make_dataset(cfg, "encode", seed=0)
    assert encode.names == ["a.png", "b.jpg", "c.png", "sub/d.bmp"]
    for i in range(4):
        assert encode.raw(i).shape == (16, 16, 3) and encode.load(i).dtype == np.float32
    squashed = Image.fromarray(pixels["a.png"]).resize((16, 16), Image.BILINEAR)
    assert np.array_equal(encode.raw(0), np.asarray(squashed))
    gray = encode.raw(2)
    assert np.array_equal(gray[..., 0], gray[..., 2])                 # grayscale file -> RGB
    sizes = {s: len(make_dataset(cfg, s, seed=0, subset_ratio=0.5)) for s in SPLITS}
    assert sizes == {"train": 4, "encode": 4, "div_stats": 2, "val": 4, "test": 3}
    test = make_dataset(cfg, "test", seed=0)
    assert test.names == ["000.png", "001.png", "002.png"]
    assert all(np.array_equal(test.load(0, rng(0, e, 0)), test.load(0)) for e in range(6))


def test_grayscale_custom_and_decoded_cache(tmp_path):
    make_folders(tmp_path)
    lazy = make_dataset(data_cfg("custom", tmp_path, channels=1, target_res=8), "train", seed=0)
    cached_cfg = data_cfg("custom", tmp_path, channels=1, target_res=8, decoded_cache=True)
    cached = make_dataset(cached_cfg, "train", seed=0)
    assert lazy.raw(1).shape == (8, 8, 1) and lazy.names == cached.names
    for i in range(len(lazy)):
        assert np.array_equal(lazy.load(i, rng(0, 0, i)), cached.load(i, rng(0, 0, i)))
    files = list((tmp_path / "cache" / "decoded").glob("custom-train-8x8x1-*.npy"))
    assert len(files) == 1 and np.load(files[0]).shape == (4, 8, 8, 1)
    clone = pickle.loads(pickle.dumps(cached))                       # workers get the path, not the array
    assert clone.store._array is None and np.array_equal(clone.raw(3), cached.raw(3))
    make_dataset(cached_cfg, "train", seed=0)
    assert len(list(files[0].parent.iterdir())) == 1                 # reused, not rebuilt


@pytest.mark.parametrize("problem", ["missing", "empty", "text_file", "corrupt_image"])
def test_folder_errors(tmp_path, problem):
    folder = tmp_path / "train"
    if problem == "empty":
        folder.mkdir()
    elif problem == "text_file":
        write_image(folder / "a.png", (8, 8))
        (folder / "LICENSE.txt").write_text("license")
    elif problem == "corrupt_image":
        (folder / "a.jpg").parent.mkdir(parents=True)
        (folder / "a.jpg").write_bytes(b"this is no jpeg")
    with pytest.raises(UserError) as excinfo:
        make_dataset(data_cfg("celebA", tmp_path), "train", seed=0)
    one_line_error(excinfo, folder)
    if problem == "missing":
        one_line_error(excinfo, "train_data_path", "download_and_preprocess.sh celeba")


# --- embedded sources ----------------------------------------------------------------------------------

def test_embedded_rgb(tmp_path):
    cfg = data_cfg("embedded_rgb", tmp_path)
    sizes = {s: len(make_dataset(cfg, s, seed=0, subset_ratio=0.1)) for s in SPLITS}
    assert sizes == {"train": 4000, "encode": 4000, "div_stats": 400, "val": 500, "test": 500}
    train, val = make_dataset(cfg, "train", seed=0), make_dataset(cfg, "val", seed=0)
    assert train.load(5, rng(0)).shape == (32, 32, 3) and val.raw(5).dtype == np.uint8
    assert np.array_equal(val.raw(3), make_dataset(cfg, "val", seed=0).raw(3))
    for pool in ("train", "heldout"):                                 # held-out pixels never seen in training
        for p, top, left, side in embedded.crop_boxes(pool):
            split = int(embedded.photo(embedded.PHOTOS[p]).shape[1] * embedded.TRAIN_FRACTION)
            assert (left + side <= split) if pool == "train" else (left >= split)
    gray = make_dataset(data_cfg("embedded_rgb", tmp_path, channels=1, target_res=16), "test", seed=0)
    assert gray.load(0).shape == (16, 16, 1)


def test_embedded_digits(tmp_path):
    cfg = data_cfg("embedded_digits", tmp_path, channels=1)
    sets = {s: make_dataset(cfg, s, seed=0, subset_ratio=0.5) for s in SPLITS}
    assert {s: len(d) for s, d in sets.items()} == {"train": 1297, "encode": 1297, "div_stats": 648,
                                                   "val": 250, "test": 250}
    names = [set(sets[s].names) for s in ("train", "val", "test")]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    probs = sets["val"].raw(0)
    assert probs.shape == (32, 32, 1) and 0 <= probs.min() and probs.max() <= 1 and probs.max() > 0.5
    x = sets["train"].load(0, rng(0, 0, 0))
    assert x.dtype == np.float32 and set(np.unique(x)) <= {0.0, 1.0}


def test_embedded_digits_are_sharp_strokes_on_blank_paper():
    curve = embedded.stroke_probabilities(np.array([-0.1, 0.0, embedded.STROKE_LEVEL, 1.0, 1.1]))
    assert curve.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0], abs=1e-6)
    digits = embedded._digits()
    assert digits.shape == (1797, 28, 28) and digits.dtype == np.float32
    edge = ((digits > 0.05) & (digits < 0.95)).mean()
    assert (digits == 0).mean() > 0.3 and edge < 0.2  # mostly exactly 0 or near 1
    labels = embedded.digit_labels()
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))


# --- splits --------------------------------------------------------------------------------------------

def test_splits_are_seeded_and_stable(tmp_path):
    cfg = data_cfg("embedded_digits", tmp_path, channels=1)
    for split in ("val", "div_stats"):
        a, b = (make_dataset(cfg, split, seed=7, subset_ratio=0.2) for _ in range(2))
        c = make_dataset(cfg, split, seed=8, subset_ratio=0.2)
        assert a.names == b.names and a.names != c.names
    full = make_dataset(cfg, "val", seed=7).names
    assert make_dataset(cfg, "val", seed=7, n_samples=10).names == full[:10]
    assert sorted(full) == sorted(make_dataset(cfg, "val", seed=8).names)
    assert make_dataset(cfg, "encode", seed=1).names == make_dataset(cfg, "encode", seed=2).names
    with pytest.raises(UserError) as excinfo:
        make_dataset(cfg, "val", seed=0, n_samples=251)
    one_line_error(excinfo, "251", "250", "n_samples_for_validation")
    with pytest.raises(ValueError):
        make_dataset(cfg, "div_stats", seed=0)
    with pytest.raises(ValueError):
        make_dataset(cfg, "validation", seed=0)

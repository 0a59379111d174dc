"""Small files in each dataset's real on-disk format (MNIST idx, CIFAR-10 pickles, ImageNet .npz, image
folders), and the helpers the data tests share."""
import gzip
import pickle
import struct

import numpy as np
from PIL import Image

from efficient_vdvae_core.config import DataConfig


def data_cfg(source, tmp_path, **kw):
    values = dict(dataset_source=source, train_data_path=str(tmp_path / "train"),
                  val_data_path=str(tmp_path / "val"), synthesis_data_path=str(tmp_path / "test"),
                  target_res=32, channels=3, num_bits=8.0, random_horizontal_flip=True,
                  download_dir=str(tmp_path / "cache"))
    values.update(kw)
    return DataConfig(**values)


def rng(*key):
    return np.random.default_rng(list(key))


def one_line_error(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, message


# --- writers of the real formats -----------------------------------------------------------------------

def write_idx(path, images, gz):
    blob = struct.pack(">IIII", 2051, *images.shape) + images.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(blob)


def write_mnist(cache, n_train=20, n_test=10):
    images = np.random.default_rng(0).integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    write_idx(cache / "mnist" / "train-images-idx3-ubyte.gz", images[:n_train], gz=True)
    write_idx(cache / "mnist" / "t10k-images-idx3-ubyte", images[n_train:], gz=False)
    return images[:n_train], images[n_train:]


def cifar_batch(images):
    """A CIFAR-10 python batch as the real files hold it (bytes keys, N x 3072 channel-planar uint8)."""
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return {b"batch_label": b"testing batch", b"labels": [i % 10 for i in range(len(images))],
            b"data": planar, b"filenames": [b"img_%d.png" % i for i in range(len(images))]}


def write_cifar(folder, per_batch=4, n_test=10):
    images = np.random.default_rng(1).integers(0, 256, (5 * per_batch + n_test, 32, 32, 3), dtype=np.uint8)
    images[0] = 255
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        chunk = images[k * per_batch:(k + 1) * per_batch] if k < 5 else images[5 * per_batch:]
        with open(folder / name, "wb") as f:
            pickle.dump(cifar_batch(chunk), f, protocol=2)
    return images[:5 * per_batch], images[5 * per_batch:]


def write_npz(path, images, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=images.transpose(0, 3, 1, 2).reshape(len(images), -1), **extra)


def write_image(path, size, mode="RGB", fmt=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path, format=fmt)
    return pixels

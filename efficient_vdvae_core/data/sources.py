"""Readers of each `dataset_source`: one call opens one part ('train', 'val' or 'test') of a dataset.

`open_part(data_cfg, part)` returns `(store, indices)`: a store (see `stores.py`) and the indices of the
part in it, in a stable order. MNIST and CIFAR-10 have one official test set: it is permuted with the
fixed seed 101 (`RandomState(101)`, the same halves as the original's sklearn shuffle) and its first half
is 'val', its second half 'test'. ImageNet and image folders read one folder per part
(train_data_path, val_data_path, synthesis_data_path).
"""
import codecs
import gzip
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from efficient_vdvae_core.data import cache, checks, downloads, embedded
from efficient_vdvae_core.data.decode import UnreadableImageError, decode_image, exception_reason
from efficient_vdvae_core.data.stores import ArrayStore, DigitStore, FolderStore, heldout_halves
from efficient_vdvae_core.errors import UserError

PARTS = ("train", "val", "test")
PATH_KEYS = {"train": "train_data_path", "val": "val_data_path", "test": "synthesis_data_path"}
PREPARE_HINT = {"imagenet": "bash data_scripts/download_and_preprocess.sh imagenet32 (or imagenet64)",
                "celebA": "bash data_scripts/download_and_preprocess.sh celeba",
                "celebAHQ": "bash data_scripts/download_and_preprocess.sh celebahq",
                "ffhq": "bash data_scripts/download_and_preprocess.sh ffhq",
                "custom": "put your images there"}


def _heldout(store, part):
    if part == "train":
        return store, np.arange(len(store))
    val, test = heldout_halves(len(store))
    return store, (val if part == "val" else test)


def open_part(data_cfg, part):
    """(store, indices) of one part of the dataset described by `data_cfg`."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    source = data_cfg.dataset_source
    if source == "binarized_mnist":
        return _heldout(_mnist_store(data_cfg, part), part)
    if source == "cifar-10":
        return _heldout(_cifar10_store(data_cfg, part), part)
    if source == "embedded_digits":
        return embedded.digits_part(part)
    if source == "embedded_rgb":
        return embedded.rgb_part(part, data_cfg.target_res, data_cfg.channels)
    folder = _data_folder(data_cfg, part)
    if source == "imagenet" and imagenet_release(data_cfg, part) == "box":
        store = _imagenet_store(data_cfg, folder, part)
    else:
        store = _folder_store(data_cfg, folder, part)
    return store, np.arange(len(store))


IMAGENET_RELEASES = {
    "box": "the box-resized release of Chrabaszcz et al. 2017 (.npz batches), as the original code uses",
    "oord": "the benchmark release of van den Oord et al. 2016 (PNG files), as most published ImageNet NLLs use"}


def imagenet_release(data_cfg, part):
    """'oord' when the imagenet folder of `part` holds PNG files (the 2016 benchmark release), else 'box'."""
    folder = _data_folder(data_cfg, part)
    files = _listing(folder, PATH_KEYS[part])
    return "oord" if files and all(f.lower().endswith(".png") for f in files) else "box"


def dataset_label(data_cfg, part):
    """What an NLL is computed on, e.g. 'cifar-10 32x32' or 'imagenet 32x32, the benchmark release of ...'."""
    label = f"{data_cfg.dataset_source} {data_cfg.target_res}x{data_cfg.target_res}"
    if data_cfg.dataset_source == "imagenet":
        label += ", " + IMAGENET_RELEASES[imagenet_release(data_cfg, part)]
    return label


def _data_folder(data_cfg, part):
    key = PATH_KEYS[part]
    raw = getattr(data_cfg, key)
    folder = Path(os.path.expanduser(raw)).absolute()
    if not folder.is_dir():
        hint = PREPARE_HINT[data_cfg.dataset_source]
        raise UserError(f"[data] {key} = '{raw}': folder {folder} not found; {hint}, or fix the path")
    return folder


def _listing(folder, key):
    """Sorted relative paths of the non-hidden files under `folder` (recursively)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, folder)
        out += [f if rel == "." else f"{rel}/{f}" for f in filenames if not f.startswith(".")]
    if not out:
        raise UserError(f"[data] {key}: folder {folder} is empty")
    return sorted(out)


# --- MNIST ---------------------------------------------------------------------------------------------

def _mnist_store(data_cfg, part):
    folder = downloads.ensure_mnist(data_cfg)
    stem = "train-images-idx3-ubyte" if part == "train" else "t10k-images-idx3-ubyte"
    path = folder / stem if (folder / stem).exists() else folder / f"{stem}.gz"
    tag = "binarized_mnist" if part == "train" else "binarized_mnist_test"
    return DigitStore(tag, read_idx_images(path), scale=1 / 255)


def read_idx_images(path):
    """uint8 (N, rows, cols) array of an IDX image file (magic 2051), gzipped or not."""
    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as f:
            blob = f.read()
        magic, n, rows, cols = struct.unpack(">IIII", blob[:16])
    except (OSError, EOFError, struct.error) as exc:
        raise UserError(f"{path}: not an IDX image file ({exc}); delete it to download it again") from None
    if magic != 2051 or len(blob) != 16 + n * rows * cols:
        raise UserError(f"{path}: not an IDX image file (magic {magic}, {len(blob)} bytes); "
                        "delete it to download it again")
    return np.frombuffer(blob, np.uint8, offset=16).reshape(n, rows, cols)


# --- CIFAR-10 ------------------------------------------------------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, numpy arrays) and refuses anything else."""
    _reconstruct = np.ndarray((0,)).__reduce__()[0]
    ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode,  # Python 3 protocol-2 pickles encode bytes this way
               ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def read_cifar_batch(path):
    """uint8 (N, 32, 32, 3) images of one CIFAR-10 python batch file."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
        if data is None:
            raise ValueError("no 'data' entry")
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"'data' is {data.dtype} {data.shape}, expected uint8 N x 3072")
    except FileNotFoundError:
        raise UserError(f"{path}: missing; delete {Path(path).parent} to download CIFAR-10 again") from None
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise UserError(f"{path}: not a CIFAR-10 python batch ({exc}); delete {Path(path).parent} "
                        "to download CIFAR-10 again") from None
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel-planar -> (N, H, W, C)


def _cifar10_store(data_cfg, part):
    if data_cfg.channels != 3 or data_cfg.target_res != 32:
        raise UserError(f"[data] dataset_source = 'cifar-10' needs channels = 3 and target_res = 32 "
                        f"(found {data_cfg.channels} and {data_cfg.target_res})")
    folder = downloads.ensure_cifar10(data_cfg)
    if part == "train":
        images = np.concatenate([read_cifar_batch(folder / f"data_batch_{k}") for k in range(1, 6)])
        return ArrayStore("cifar-10", images)
    return ArrayStore("cifar-10_test", np.ascontiguousarray(read_cifar_batch(folder / "test_batch")))


# --- ImageNet (downsampled, .npz) ----------------------------------------------------------------------

def _npz_header(path):
    """(shape, dtype) of the 'data' array of an .npz file, read from its header without loading it."""
    with zipfile.ZipFile(path) as archive, archive.open("data.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
    return shape, dtype


def npz_problem(path, res):
    """Why the ImageNet .npz batch at `path` cannot be used at target_res = `res`, or None (header only)."""
    if not path.endswith(".npz"):
        return "not a .npz file name; the imagenet folder must hold only .npz files"
    try:
        shape, dtype = _npz_header(path)
    except KeyError:
        return f"no 'data' array; use the ImageNet{res} npz files"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        return f"not a readable .npz file: {exception_reason(exc)}"
    if dtype != np.uint8 or len(shape) != 2 or shape[1] != 3 * res * res:
        return (f"'data' is {dtype} {shape}, expected uint8 N x {3 * res * res} (3 x {res} x {res} for "
                f"target_res = {res}); check target_res or the folder")
    return None


def _imagenet_store(data_cfg, folder, part):
    if data_cfg.channels != 3:
        raise UserError(f"[data] dataset_source = 'imagenet' needs channels = 3 (found {data_cfg.channels})")
    files = check_files(data_cfg, part)
    while True:
        rows = [_npz_header(folder / name)[0][0] for name in files]
        try:
            return _load_imagenet(data_cfg, folder, part, files, rows)
        except checks.FilesFailedToLoad as exc:
            files = _keep_good(data_cfg, part, folder, files, exc.bad)


def _load_imagenet(data_cfg, folder, part, files, rows):
    res = data_cfg.target_res

    def fill(out):
        failed, start = {}, 0
        for name, n in zip(files, rows):
            try:
                with np.load(folder / name) as npz:
                    out[start:start + n] = npz["data"].reshape(n, 3, res, res).transpose(0, 2, 3, 1)
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
                failed[name] = f"fails to load: {exception_reason(exc)}"
            start += n
        if failed:
            raise checks.FilesFailedToLoad(failed)

    tag = "imagenet" if part == "train" else f"imagenet_{part}"
    shape = (sum(rows), res, res, 3)
    if data_cfg.decoded_cache:
        return ArrayStore(tag, npy_path=cache.decoded_array(data_cfg, folder, files, shape, fill))
    images = np.empty(shape, np.uint8)
    fill(images)
    return ArrayStore(tag, images)


# --- folders of image files ----------------------------------------------------------------------------

def _folder_store(data_cfg, folder, part):
    res, channels = data_cfg.target_res, data_cfg.channels
    tag = f"{data_cfg.dataset_source}_{part}"
    if data_cfg.decoded_cache:  # a complete cache of exactly these files: each one was decoded to build it
        files = _listing(folder, PATH_KEYS[part])
        npy = cache.cache_path(data_cfg, folder, files, (len(files), res, res, channels))
        if npy.exists():
            return ArrayStore(tag, npy_path=npy, names=files)
    files = check_files(data_cfg, part)
    if not data_cfg.decoded_cache:
        return FolderStore(tag, folder, files, res, channels)
    while True:
        try:
            return _cached_folder(data_cfg, folder, tag, files)
        except checks.FilesFailedToLoad as exc:
            files = _keep_good(data_cfg, part, folder, files, exc.bad)


def _cached_folder(data_cfg, folder, tag, files):
    res, channels = data_cfg.target_res, data_cfg.channels

    def fill(out):
        failed = {}
        for i, name in enumerate(files):
            try:
                out[i] = decode_image(folder / name, res, channels)
            except UnreadableImageError as exc:
                failed[name] = f"fails to decode: {exc.reason}"
        if failed:
            raise checks.FilesFailedToLoad(failed)

    npy = cache.decoded_array(data_cfg, folder, files, (len(files), res, res, channels), fill)
    return ArrayStore(tag, npy_path=npy, names=files)


# --- the checks of every file of a folder dataset ------------------------------------------------------

def check_files(data_cfg, part):
    """Sorted relative paths of the usable files of a folder part (imagenet or image folders).

    Every file's header and end are checked (see `checks`); bad files refuse the dataset, or are left
    out under [data] bad_files = 'skip'. Cheap on re-opening: verdicts are remembered per process.
    """
    folder = _data_folder(data_cfg, part)
    files = _listing(folder, PATH_KEYS[part])
    if data_cfg.dataset_source == "imagenet" and imagenet_release(data_cfg, part) == "box":
        res = data_cfg.target_res
        bad = checks.bad_files(folder, files, f"npz{res}", lambda path, size: npz_problem(path, res))
    else:
        bad = checks.bad_files(folder, files, "image", checks.image_file_problem)
    return _keep_good(data_cfg, part, folder, files, bad)


def _keep_good(data_cfg, part, folder, files, bad):
    key = PATH_KEYS[part]
    return checks.keep_good(files, bad, policy=data_cfg.bad_files, key=key, raw=getattr(data_cfg, key),
                            folder=folder)

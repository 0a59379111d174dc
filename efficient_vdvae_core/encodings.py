r"""Latent encodings on disk: posterior statistics of the kept variates, one NumPy file per layer and statistic.

Written by the 'encoding' synthesis mode, read by 'decoding' and by anyone with NumPy alone: no pickle,
no framework. The arrays are filled batch by batch through memory maps, so a dataset of any size is
encoded without holding it in memory, and reading maps the files instead of loading them.

Folder layout (format version 1), by default `logs-<name>/latents/encodings_seed_<seed>/`:

    metadata.json        what the folder holds (below); written last, so a folder without it is incomplete
    names.txt            the image names, one per line (UTF-8, '\n' ends every line), in array order: line i
                         is row i of every array
    layer_<l>_mean.npy   float32 (N, H_l, W_l, K_l): posterior means of the K_l kept variates of latent layer l
    layer_<l>_std.npy    float32 (N, H_l, W_l, K_l): posterior standard deviations of the same variates

`l` is the latent-layer index in top-down order (0 = the first layer after the learned top input, the
lowest resolution). Layers where no variate is kept have no files. The std files always hold standard
deviations, also for models with `distribution_base = 'logstd'` (converted with std = exp(beta * logstd)).

metadata.json keys:
    format            "efficient-vdvae-encodings"
    format_version    1
    n_images          N, the number of rows of every array and of lines of names.txt
    n_latent_layers   number of latent layers of the model, kept or not
    n_variates        variates per latent layer (list, one entry per latent layer)
    layers            one entry per kept layer, in layer order:
                      {"layer": l, "height": H_l, "width": W_l, "kept_variates": [indices of the kept
                       variates, ascending, into 0..V_l-1], "mean_file": "layer_<l>_mean.npy",
                       "std_file": "layer_<l>_std.npy"}
    array_layout      "NHWC", array_dtype "float32", names_file "names.txt"
    model_fingerprint {"config_sha256": ..., "weights_sha256": ...} of the model that wrote the encodings
                      (`model_fingerprint`), when the writer was given one; decoding with another model
                      is refused (`check_same_model`)
    plus descriptive keys from the writer (run name, dataset, split, seed, checkpoint step,
    distribution_base, variate_masks_quantile, ...), which readers need not understand.

Reading with NumPy alone:

    meta = json.load(open(folder / "metadata.json"))
    names = (folder / "names.txt").read_text(encoding="utf-8").split("\n")[:-1]
    for layer in meta["layers"]:
        mean = numpy.load(folder / layer["mean_file"], mmap_mode="r")  # (N, H, W, K)
"""
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from efficient_vdvae_core.errors import UserError

FORMAT = "efficient-vdvae-encodings"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
NAMES_FILE = "names.txt"
FINGERPRINT_KEY = "model_fingerprint"
# The config values that decide what an encoding means: the whole [model] section and these [data] keys.
MODEL_SHAPING_DATA_KEYS = ("dataset_source", "target_res", "channels", "num_bits")
HASH_CHARS = 16  # hex digits kept of each SHA-256 (64 bits)
CHECK_CHUNK_BYTES = 32 << 20  # rows of an array checked for NaN/inf at a time


class EncodingsError(UserError):
    """An encodings folder that is missing, incomplete or inconsistent, with the folder named."""


@dataclass(frozen=True)
class LayerSpec:
    """One kept latent layer of an encoding: its index, grid size and kept variate indices."""
    layer: int
    height: int
    width: int
    kept_variates: tuple

    @property
    def mean_file(self):
        return f"layer_{self.layer}_mean.npy"

    @property
    def std_file(self):
        return f"layer_{self.layer}_std.npy"

    @property
    def shape(self):
        """Per-image array shape (H, W, K)."""
        return (self.height, self.width, len(self.kept_variates))

    def to_json(self):
        return {"layer": self.layer, "height": self.height, "width": self.width,
                "kept_variates": list(self.kept_variates), "mean_file": self.mean_file, "std_file": self.std_file}


def kept_layer_specs(masks, resolutions):
    """LayerSpecs of the layers with at least one kept variate; masks (N_lat, V) bool, resolutions per layer."""
    masks = np.asarray(masks, dtype=bool)
    return [LayerSpec(layer=l, height=int(r), width=int(r), kept_variates=tuple(int(v) for v in np.flatnonzero(row)))
            for l, (row, r) in enumerate(zip(masks, resolutions)) if row.any()]


def model_fingerprint(config, weights_numpy_by_name):
    """{"config_sha256", "weights_sha256"}: hashes of the model-shaping config values and of the weights used.

    `config`: a Config or its `to_dict()`; hashed are its [model] section and [data] MODEL_SHAPING_DATA_KEYS.
    `weights_numpy_by_name`: {PyTorch state_dict name: array} in the PyTorch layout (OIHW kernels, NCHW
    scale_bias/trainable_h), so both frameworks give the same fingerprint for the same weights (the JAX
    side converts its tree with `jax_params_to_torch_state_dict`, which is exact). Each hash is the first
    HASH_CHARS hex digits of a SHA-256.
    """
    sections = config if isinstance(config, dict) else config.to_dict()
    shaping = {"model": sections["model"], "data": {k: sections["data"][k] for k in MODEL_SHAPING_DATA_KEYS}}
    config_hash = hashlib.sha256(json.dumps(shaping, sort_keys=True, separators=(",", ":")).encode())
    weights_hash = hashlib.sha256()
    for name in sorted(weights_numpy_by_name):
        array = np.ascontiguousarray(np.asarray(weights_numpy_by_name[name]), dtype="<f4")
        weights_hash.update(f"{name}:{array.shape}\n".encode())
        weights_hash.update(memoryview(array).cast("B"))
    return {"config_sha256": config_hash.hexdigest()[:HASH_CHARS],
            "weights_sha256": weights_hash.hexdigest()[:HASH_CHARS]}


def _describe(fingerprint):
    if not fingerprint:
        return "none (written without a model fingerprint)"
    return f"config {fingerprint.get('config_sha256')} weights {fingerprint.get('weights_sha256')}"


def check_same_model(metadata, fingerprint, allow_other_model, source=None):
    """EncodingsError unless the encodings of `metadata` were written by the model of `fingerprint`.

    With `allow_other_model` any encodings are accepted (decoding them with another model makes images
    that mean nothing, unless the two models are the same network under another checkpoint format).
    """
    stored = metadata.get(FINGERPRINT_KEY)
    if allow_other_model or stored == fingerprint:
        return
    where = f"{source}: " if source is not None else ""
    raise EncodingsError(f"{where}these encodings were written by another model (encodings: {_describe(stored)}; "
                         f"this model: {_describe(fingerprint)}); decode with the model and checkpoint that encoded "
                         "them, or pass --allow-other-model to decode them anyway")


class EncodingWriter:
    """Streams encodings into a new folder: `write(start, means, stds, names)` per batch, then `close()`.

    With `processes` (an object with is_main and barrier()), several processes write their rows into the
    arrays the main process creates, and the main one finishes the folder.

    Everything goes to a hidden sibling folder first; `close()` writes names.txt and metadata.json and
    then moves it into place (replacing an older folder of the same name), so `folder` is either absent,
    the previous complete encoding, or the new complete one. Use as a context manager: an exception
    removes the partial folder.
    """

    def __init__(self, folder, layers, n_images, n_variates, extra_metadata=None, fingerprint=None, processes=None):
        if n_images < 1:
            raise ValueError("EncodingWriter: n_images must be >= 1")
        self.folder = Path(folder)
        self.layers = list(layers)
        self.n_images = int(n_images)
        self.n_variates = [int(v) for v in n_variates]
        self.extra_metadata = dict(extra_metadata or {})
        self.fingerprint = None if fingerprint is None else dict(fingerprint)
        self.processes = processes
        self.creator = processes is None or processes.is_main
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        tag = os.getpid() if processes is None else "shared"
        self.partial = self.folder.with_name(f".{self.folder.name}.partial-{tag}")
        if self.creator:
            if self.partial.exists():
                shutil.rmtree(self.partial)
            self.partial.mkdir()
        else:
            processes.barrier()  # the main process has created the arrays
        self.names = [None] * self.n_images
        self.means, self.stds = {}, {}
        mode = "w+" if self.creator else "r+"
        for spec in self.layers:
            shape = (self.n_images, *spec.shape)
            self.means[spec.layer] = open_memmap(self.partial / spec.mean_file, mode=mode, dtype=np.float32, shape=shape)
            self.stds[spec.layer] = open_memmap(self.partial / spec.std_file, mode=mode, dtype=np.float32, shape=shape)
        if self.creator and processes is not None:
            processes.barrier()

    def write(self, start, means, stds, names):
        """Rows start..start+B-1: `means`/`stds` map layer -> (B, H, W, K) arrays; `names` has B strings."""
        stop = start + len(names)
        if start < 0 or stop > self.n_images:
            raise ValueError(f"EncodingWriter.write: rows {start}..{stop - 1} outside 0..{self.n_images - 1}")
        for name in names:
            if not name or "\n" in name or "\r" in name:
                raise ValueError(f"EncodingWriter.write: image name {name!r} is empty or contains a line break")
        for spec in self.layers:
            for store, given in ((self.means, means), (self.stds, stds)):
                block = np.asarray(given[spec.layer], dtype=np.float32)
                if block.shape != (len(names), *spec.shape):
                    raise ValueError(f"EncodingWriter.write: layer {spec.layer} block of shape {block.shape}, "
                                     f"expected {(len(names), *spec.shape)}")
                store[spec.layer][start:stop] = block
        self.names[start:stop] = list(names)

    def close(self, names=None):
        """Flush the arrays, write names.txt and metadata.json, move the folder into place; returns its path.

        With several processes, each flushes its rows, and the main one, given every image's `names`, finishes.
        """
        if self.processes is not None:
            for store in (self.means, self.stds):
                for array in store.values():
                    array.flush()
            self.processes.barrier()  # every row is on disk
            if not self.creator:
                self.means, self.stds = {}, {}
                return self.folder
            self.names = list(names)
        missing = [i for i, n in enumerate(self.names) if n is None]
        if missing:
            raise ValueError(f"EncodingWriter.close: {len(missing)} rows were never written (first: {missing[0]})")
        for store in (self.means, self.stds):
            for array in store.values():
                array.flush()
        self.means, self.stds = {}, {}
        with open(self.partial / NAMES_FILE, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(n + "\n" for n in self.names)
        required = {"n_images": self.n_images, "n_latent_layers": len(self.n_variates), "n_variates": self.n_variates,
                    "layers": [spec.to_json() for spec in self.layers], "array_layout": "NHWC",
                    "array_dtype": "float32", "names_file": NAMES_FILE}
        if self.fingerprint is not None:
            required[FINGERPRINT_KEY] = self.fingerprint
        extra = {k: v for k, v in self.extra_metadata.items() if k not in required and not k.startswith("format")}
        metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, **extra, **required}
        (self.partial / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        old = None
        if self.folder.exists():
            old = self.folder.with_name(f".{self.folder.name}.old-{os.getpid()}")
            os.replace(self.folder, old)
        os.replace(self.partial, self.folder)
        if old is not None:
            shutil.rmtree(old)
        return self.folder

    def abort(self):
        """Remove the partial folder (the main process's part)."""
        self.means, self.stds = {}, {}
        if self.creator:
            shutil.rmtree(self.partial, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


@dataclass(frozen=True)
class Encodings:
    """A read encodings folder: metadata dict, image names, and read-only memory-mapped arrays by layer."""
    folder: Path
    metadata: dict
    names: list
    layers: list  # LayerSpec per kept layer, in layer order
    means: dict  # layer -> (N, H, W, K) float32 memmap
    stds: dict  # layer -> (N, H, W, K) float32 memmap

    def __len__(self):
        return len(self.names)


def read_encodings(folder, check_values=True):
    """Open an encodings folder written by EncodingWriter (any machine, any framework).

    With `check_values`, every array is scanned once (in chunks, through its memory map) and a NaN or
    infinite value, or a negative standard deviation, is refused naming the file and the first image.
    """
    folder = Path(folder)
    meta_path = folder / METADATA_FILE
    if not folder.is_dir():
        raise EncodingsError(f"{folder}: no encodings folder; run synthesize.py with synthesis_mode = 'encoding' first")
    if not meta_path.is_file():
        raise EncodingsError(f"{folder}: no {METADATA_FILE}, the encoding is incomplete; run the 'encoding' mode again")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EncodingsError(f"{meta_path}: unreadable metadata ({exc})") from None
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise EncodingsError(f"{meta_path}: format {metadata.get('format')!r} version {metadata.get('format_version')!r}"
                             f" is not {FORMAT!r} version {FORMAT_VERSION}")
    n = metadata["n_images"]
    with open(folder / metadata.get("names_file", NAMES_FILE), encoding="utf-8", newline="\n") as f:
        names = f.read().split("\n")
    if names and names[-1] == "":
        names.pop()
    if len(names) != n:
        raise EncodingsError(f"{folder}: {len(names)} names for {n} images")
    layers, means, stds = [], {}, {}
    for entry in metadata["layers"]:
        spec = LayerSpec(layer=int(entry["layer"]), height=int(entry["height"]), width=int(entry["width"]),
                         kept_variates=tuple(int(v) for v in entry["kept_variates"]))
        layers.append(spec)
        for store, key in ((means, "mean_file"), (stds, "std_file")):
            path = folder / entry[key]
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise EncodingsError(f"{path}: unreadable array ({exc})") from None
            if array.shape != (n, *spec.shape) or array.dtype != np.float32:
                raise EncodingsError(f"{path}: {array.dtype} array of shape {array.shape}, expected float32 "
                                     f"{(n, *spec.shape)}")
            if check_values:
                _check_values(array, path, names, is_std=key == "std_file")
            store[spec.layer] = array
    return Encodings(folder=folder, metadata=metadata, names=names, layers=layers, means=means, stds=stds)


def _check_values(array, path, names, is_std):
    """EncodingsError at the first image of `array` (N, ...) with a NaN/inf value, or a negative std."""
    rows = max(1, CHECK_CHUNK_BYTES // max(1, int(np.prod(array.shape[1:])) * array.itemsize))
    for start in range(0, len(array), rows):
        chunk = array[start:start + rows]
        bad = ~np.isfinite(chunk)
        if is_std:
            bad |= chunk < 0
        if bad.any():
            per_image = bad.reshape(len(chunk), -1)
            first = start + int(np.flatnonzero(per_image.any(axis=1))[0])
            value = array[first].reshape(-1)[np.flatnonzero(per_image[first - start])[0]]
            what = "non-finite or negative standard deviations" if is_std else "non-finite values"
            raise EncodingsError(f"{path}: {what} (first: {value} at image {first}, {names[first]!r}); the "
                                 "encodings are damaged: run the 'encoding' mode again")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_stems(names):
    """File-name stems for image names: path separators and odd characters become '_', extensions go.

    'a/b/c.jpg' -> 'a_b_c'; names that end up empty or equal to an earlier one get '-<row index>'.
    """
    stems, seen = [], set()
    for i, name in enumerate(names):
        stem = name.replace("\\", "/")
        base, dot, ext = stem.rpartition(".")
        if dot and base and "/" not in ext and 1 <= len(ext) <= 5:
            stem = base
        stem = _UNSAFE.sub("_", stem).strip("._") or f"image-{i:04d}"
        while stem in seen:
            stem = f"{stem}-{i:04d}"
        seen.add(stem)
        stems.append(stem)
    return stems

"""Download of MNIST and CIFAR-10 on first use: mirrors, md5 verification, resume of partial files.

A download goes to `<file>.part`; an interrupted one is resumed with an HTTP Range request (a server
that ignores the range restarts it from zero). The file is renamed into place only after its md5
matches the published checksum. A lock file keeps concurrent processes (ranks) from downloading the
same file twice. Every failure becomes a one-line `UserError` saying which file to place where.
"""
import contextlib
import fcntl
import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from efficient_vdvae_core.errors import UserError

MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "http://yann.lecun.com/exdb/mnist/")
MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3"}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published on https://www.cs.toronto.edu/~kriz/cifar.html
CIFAR10_FOLDER = "cifar-10-batches-py"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60


def download_root(data_cfg):
    """The absolute download folder of a DataConfig (`~` expanded, relative to the cwd)."""
    return Path(os.path.expanduser(data_cfg.download_dir)).absolute()


def md5_of(path):
    """Hex md5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download_to_part(url, part):
    """Append the rest of `url` to `part` (HTTP Range from its current size), or rewrite it from zero."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "efficient-vdvae"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to fetch: the part file is complete
            return
        raise
    with response:
        status = getattr(response, "status", None) or response.getcode()
        resumed = offset and status == 206
        with open(part, "ab" if resumed else "wb") as out:
            shutil.copyfileobj(response, out, CHUNK_BYTES)


def fetch(urls, dest, md5):
    """Download `dest` from the first working URL of `urls`, md5-verified; None, or why the last URL failed."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    reason = "no URL"
    for url in urls:
        try:
            _download_to_part(url, part)
        except (OSError, ValueError, urllib.error.URLError) as exc:
            reason = f"{url}: {getattr(exc, 'reason', None) or exc}"
            continue
        if md5_of(part) == md5:
            os.replace(part, dest)
            return None
        part.unlink()
        reason = f"{url}: md5 mismatch"
    return reason


def ensure_mnist(data_cfg):
    """Folder holding the MNIST image files (IDX, gzipped or not); downloads what is missing."""
    folder = download_root(data_cfg) / "mnist"
    for name, md5 in MNIST_MD5.items():
        target = folder / name
        if target.exists() or (folder / name[:-3]).exists():
            continue
        with _locked(target):
            if target.exists():
                continue
            reason = fetch([m + name for m in MNIST_MIRRORS], target, md5)
        if reason:
            files = " and ".join(MNIST_MD5)
            raise UserError(f"cannot download MNIST ({reason}); place {files} (from {MNIST_MIRRORS[0]}) "
                            f"in {folder}")
    return folder


def ensure_cifar10(data_cfg):
    """Folder `cifar-10-batches-py` of the python CIFAR-10 batches; downloads and unpacks it if missing."""
    root = download_root(data_cfg) / "cifar-10"
    folder = root / CIFAR10_FOLDER
    if folder.is_dir():
        return folder
    archive = root / "cifar-10-python.tar.gz"
    with _locked(archive):
        if folder.is_dir():
            return folder
        if not archive.exists():
            reason = fetch([CIFAR10_URL], archive, CIFAR10_MD5)
            if reason:
                raise UserError(f"cannot download CIFAR-10 ({reason}); place cifar-10-python.tar.gz (from "
                                f"{CIFAR10_URL}) in {root}, or its unpacked {CIFAR10_FOLDER}/ folder")
        _unpack(archive, root)
    return folder


def _unpack(archive, root):
    tmp = root / f".unpack{os.getpid()}"
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (OSError, tarfile.TarError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{archive}: cannot unpack ({exc}); delete it to download it again") from None
    if not (tmp / CIFAR10_FOLDER).is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{archive}: has no {CIFAR10_FOLDER}/ folder; delete it to download it again")
    os.replace(tmp / CIFAR10_FOLDER, root / CIFAR10_FOLDER)
    shutil.rmtree(tmp, ignore_errors=True)

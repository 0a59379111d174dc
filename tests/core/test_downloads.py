"""Downloads (resumed, verified, mirrored, offline) and the data_scripts/ preprocessing, on local files.

No network: downloads are exercised with a monkeypatched urllib opener and local file:// URLs.
"""
import hashlib
import io
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_core.data import make_dataset
from efficient_vdvae_core.data import downloads
from efficient_vdvae_core.errors import UserError
from tests.core.data_writers import data_cfg, one_line_error, rng, write_cifar, write_image

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "data_scripts"


# --- downloads -----------------------------------------------------------------------------------------

class FakeResponse(io.BytesIO):
    def __init__(self, body, status):
        super().__init__(body)
        self.status = status


def fake_server(payload, honour_range=True, log=None):
    def urlopen(request, timeout=None):
        wanted = request.get_header("Range")
        if log is not None:
            log.append(wanted)
        if wanted and honour_range:
            return FakeResponse(payload[int(wanted[6:-1]):], 206)
        return FakeResponse(payload, 200)
    return urlopen


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_a_partial_file(tmp_path, monkeypatch, honour_range):
    payload = bytes(range(256)) * 100
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(payload[:1000])
    log = []
    monkeypatch.setattr(urllib.request, "urlopen", fake_server(payload, honour_range, log))
    assert downloads.fetch(["https://example.invalid/file.bin"], dest, hashlib.md5(payload).hexdigest()) is None
    assert dest.read_bytes() == payload and log == ["bytes=1000-"] and not (tmp_path / "file.bin.part").exists()


def test_download_bad_checksum_then_next_mirror(tmp_path, monkeypatch):
    payload = b"x" * 100
    served = iter([b"corrupted", payload])
    monkeypatch.setattr(urllib.request, "urlopen", lambda request, timeout=None: FakeResponse(next(served), 200))
    assert downloads.fetch(["https://a.invalid/f", "https://b.invalid/f"], tmp_path / "f",
                           hashlib.md5(payload).hexdigest()) is None
    assert (tmp_path / "f").read_bytes() == payload


def test_download_offline_gives_one_line(tmp_path, monkeypatch):
    def offline(request, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError) as excinfo:
        make_dataset(data_cfg("binarized_mnist", tmp_path, channels=1), "train", seed=0)
    one_line_error(excinfo, "train-images-idx3-ubyte.gz", tmp_path / "cache" / "mnist", "name resolution")
    with pytest.raises(UserError) as excinfo:
        make_dataset(data_cfg("cifar-10", tmp_path), "train", seed=0)
    one_line_error(excinfo, "cifar-10-python.tar.gz", tmp_path / "cache" / "cifar-10")


def test_cifar10_download_from_file_url(tmp_path, monkeypatch):
    src = tmp_path / "src"
    train, test = write_cifar(src / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(downloads, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(downloads, "CIFAR10_MD5", downloads.md5_of(archive))
    ds = make_dataset(data_cfg("cifar-10", tmp_path), "encode", seed=0)
    assert len(ds) == 20 and np.array_equal(ds.raw(19), train[19])
    assert (tmp_path / "cache" / "cifar-10" / "cifar-10-python.tar.gz").exists()


# --- data_scripts --------------------------------------------------------------------------------------

def run_script(name, *args):
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def test_random_split_is_seeded_and_flattens(tmp_path):
    src = tmp_path / "images1024x1024"
    for k in range(10):
        write_image(src / f"{k // 4:05d}" / f"{k:05d}.png", (8, 8), seed=k)
    (src / "LICENSE.txt").write_text("license")
    outs = []
    for name in ("a", "b"):
        run_script("random_split.py", src, tmp_path / name, 3, "--seed", "5")
        outs.append({part: sorted(p.name for p in (tmp_path / name / part).iterdir())
                     for part in ("train_data", "val_data")})
    assert outs[0] == outs[1] and len(outs[0]["val_data"]) == 3 and len(outs[0]["train_data"]) == 7
    run_script("random_split.py", src, tmp_path / "moved", 3, "--seed", "6", "--move")
    assert not list(src.rglob("*.png")) and len(list((tmp_path / "moved").rglob("*.png"))) == 10
    cfg = data_cfg("ffhq", tmp_path, train_data_path=str(tmp_path / "moved" / "train_data"),
                   val_data_path=str(tmp_path / "moved" / "val_data"), target_res=8)
    assert len(make_dataset(cfg, "train", seed=0)) == 7 and len(make_dataset(cfg, "val", seed=0)) == 3


def test_preprocess_celeba64(tmp_path):
    src = tmp_path / "img_align_celeba"
    for k in range(1, 6):
        write_image(src / f"{k:06d}.jpg", (178, 218), seed=k)
    partition = tmp_path / "list_eval_partition.txt"
    partition.write_text("".join(f"{k:06d}.jpg {p}\n" for k, p in zip(range(1, 6), [0, 0, 1, 2, 0])))
    run_script("preprocess_celeba64.py", src, partition, tmp_path / "celebA", "--workers", "1")
    out = tmp_path / "celebA"
    assert sorted(p.name for p in (out / "train_data").iterdir()) == ["000001.jpg", "000002.jpg", "000005.jpg"]
    assert [p.name for p in (out / "synthesis_data").iterdir()] == ["000004.jpg"]
    assert Image.open(out / "val_data" / "000003.jpg").size == (148, 148)
    cfg = data_cfg("celebA", tmp_path, train_data_path=str(out / "train_data"), target_res=64)
    assert make_dataset(cfg, "train", seed=0).load(0, rng(0)).shape == (64, 64, 3)


def test_utility_resize(tmp_path):
    src = tmp_path / "in"
    write_image(src / "a.jpg", (60, 40))
    write_image(src / "b.png", (20, 30), mode="L")
    runs = {}
    for name, extra in (("crop1", []), ("crop2", []), ("down", ["--downscale"])):
        run_script("utility_resize.py", "--in-path", src, "--out-path", tmp_path / name, "--resolution", 32,
                   "--resize-type", "random_crop", "--repeat-n", 2, "--seed", 1, *extra)
        runs[name] = {p.name: np.asarray(Image.open(p)) for p in (tmp_path / name).iterdir()}
    assert sorted(runs["crop1"]) == ["a_re00.jpg", "a_re01.jpg", "b_re00.png", "b_re01.png"]
    assert all(np.array_equal(runs["crop1"][k], runs["crop2"][k]) for k in runs["crop1"])
    assert all(v.shape[:2] == (32, 32) for run in runs.values() for v in run.values())
    for kind in ("reshape", "center_crop"):
        run_script("utility_resize.py", "--in-path", src, "--out-path", tmp_path / kind, "--resolution", 16,
                   "--resize-type", kind)
        assert {p.name: Image.open(p).size for p in (tmp_path / kind).iterdir()} == {"a.jpg": (16, 16),
                                                                                      "b.png": (16, 16)}


def test_download_script_usage_errors():
    script = SCRIPTS / "download_and_preprocess.sh"
    for args in ([], ["mnist"]):
        done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True)
        assert done.returncode == 2 and "usage" in done.stderr.lower()


def test_download_script_celeba_needs_manual_files(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DUMPS_DIR": str(tmp_path / "dumps"), "DATASETS_DIR": str(tmp_path / "ds"),
           "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPTS / "download_and_preprocess.sh"), "celeba"], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 1 and "img_align_celeba.zip" in done.stderr

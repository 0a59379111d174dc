"""Bad image files in a folder dataset, through train.py of both frameworks: found up front by every file's header,
refused before anything is written, in the same line."""
import importlib
import zlib

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_core.cli import run_main
from tests.conftest import EGS

FAST = ["--set", "val.n_samples_for_validation=4", "--set", "val.batch_size=4", "--set", "run.num_cpus=0",
        "--set", "train.total_train_steps=1", "--set", "run.device='cpu'"]


def custom_folder(folder, n=12):
    folder.mkdir()
    for k in range(n):
        pixels = np.random.default_rng(k).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:03d}.png")


def train_refused(tmp_path, capsys, framework, images):
    """train.py of `framework` on the custom folder `images`: its one error line (exit code 2, nothing written)."""
    work = tmp_path / f"work_{framework}"
    args = ["--config", str(EGS / "tiny.cfg"), "--workdir", str(work), *FAST, "--set", "data.dataset_source='custom'",
            *[a for key in ("train", "val", "synthesis") for a in ("--set", f"data.{key}_data_path='{images}'")]]
    train = importlib.import_module(f"efficient_vdvae_{framework}.train")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(train.main, args, parser=train.parser())
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1, (framework, lines)
    assert not work.exists() or not [p.name for p in work.iterdir() if p.name.startswith(("logs-", "checkpoints-"))]
    return lines[0]


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_train_refuses_a_bad_file_late_in_the_folder_and_writes_nothing(tmp_path, capsys, damage):
    custom_folder(tmp_path / "images")
    last = tmp_path / "images" / "011.png"
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"")
    lines = {framework: train_refused(tmp_path, capsys, framework, tmp_path / "images") for framework in ("torch", "jax")}
    reason = "truncated" if damage == "truncated" else "0 bytes"
    for framework, line in lines.items():
        for needle in ("error: 1 unreadable file in [data] train_data_path", f"011.png ({reason}", "bad_files = 'skip'"):
            assert needle in line, (framework, needle, line)
    assert lines["torch"] == lines["jax"]


def test_train_lists_every_kind_of_bad_file_in_one_line(tmp_path, capsys):
    """0-byte, truncated, garbage, a broken IHDR checksum, a broken symlink and a 100000x100000 header: all found
    up front by their headers, the first three named and the rest counted, before anything is written."""
    images = tmp_path / "images"
    custom_folder(images)
    good = (images / "000.png").read_bytes()
    (images / "a_empty.png").write_bytes(b"")
    (images / "b_truncated.png").write_bytes(good[:len(good) // 2])
    (images / "c_garbage.png").write_bytes(bytes(range(256)) * 4)
    ihdr_crc = 8 + 8 + 13  # signature, IHDR length and type, IHDR data: then its CRC-32
    (images / "d_bad_crc.png").write_bytes(good[:ihdr_crc] + bytes(b ^ 0xFF for b in good[ihdr_crc:ihdr_crc + 4])
                                           + good[ihdr_crc + 4:])
    (images / "e_broken_link.png").symlink_to(tmp_path / "nowhere.png")
    huge = bytearray(good)
    huge[16:24] = (100_000).to_bytes(4, "big") * 2  # the IHDR's width and height
    huge[ihdr_crc:ihdr_crc + 4] = zlib.crc32(bytes(huge[12:ihdr_crc])).to_bytes(4, "big")
    (images / "f_huge.png").write_bytes(bytes(huge))
    lines = {framework: train_refused(tmp_path, capsys, framework, images) for framework in ("torch", "jax")}
    line = lines["torch"]
    for needle in ("error: 6 unreadable files in [data] train_data_path", "a_empty.png (0 bytes",
                   "b_truncated.png (truncated", "c_garbage.png (", "and 3 more", "bad_files = 'skip'"):
        assert needle in line, (needle, line)
    assert lines["torch"] == lines["jax"]

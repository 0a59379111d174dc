"""A bad image file late in a folder dataset, through train.py of both frameworks: refused before anything is
written, in the same line."""
import importlib

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


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_train_refuses_a_bad_file_late_in_the_folder_and_writes_nothing(tmp_path, capsys, damage):
    custom_folder(tmp_path / "images")
    last = tmp_path / "images" / "011.png"
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"")
    images = str(tmp_path / "images")
    lines = {}
    for framework in ("torch", "jax"):
        work = tmp_path / f"work_{framework}"
        args = ["--config", str(EGS / "tiny.cfg"), "--workdir", str(work), *FAST,
                "--set", "data.dataset_source='custom'", "--set", f"data.train_data_path='{images}'",
                "--set", f"data.val_data_path='{images}'", "--set", f"data.synthesis_data_path='{images}'"]
        train = importlib.import_module(f"efficient_vdvae_{framework}.train")
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            run_main(train.main, args, parser=train.parser())
        lines[framework] = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(lines[framework]) == 1, (framework, lines[framework])
        reason = "truncated" if damage == "truncated" else "0 bytes"
        for needle in ("error: 1 unreadable file in [data] train_data_path", f"011.png ({reason}",
                       "bad_files = 'skip'"):
            assert needle in lines[framework][0], (framework, needle, lines[framework][0])
        assert not work.exists() or not [p.name for p in work.iterdir() if p.name.startswith(("logs-", "checkpoints-"))]
    assert lines["torch"] == lines["jax"]

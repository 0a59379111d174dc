"""The decoded cache is built once when several processes (the ranks of a node) need it at the same time."""
import threading
import time
from types import SimpleNamespace

import numpy as np

from efficient_vdvae_core.data.cache import decoded_array


def test_concurrent_builders_decode_once_and_share_the_file(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"x" * (i + 1))
    cfg = SimpleNamespace(dataset_source="custom", download_dir=str(tmp_path / "downloads"))
    fills, paths = [], []

    def fill(out):
        fills.append(threading.get_ident())
        time.sleep(0.5)  # long enough for the other builder to arrive while this one decodes
        out[:] = np.arange(out.size, dtype=np.uint8).reshape(out.shape)

    def build():
        paths.append(decoded_array(cfg, folder, ["0.png", "1.png", "2.png"], (3, 2, 2, 1), fill))

    builders = [threading.Thread(target=build) for _ in range(2)]  # flock: separate opens exclude each other
    for builder in builders:
        builder.start()
        time.sleep(0.1)
    for builder in builders:
        builder.join()
    assert len(fills) == 1 and len(set(paths)) == 1 and paths[0].is_file()
    np.testing.assert_array_equal(np.load(paths[0]), np.arange(12, dtype=np.uint8).reshape(3, 2, 2, 1))
    err = capsys.readouterr().err
    assert err.count("decoding 3 images") == 1 and "waiting for another process to decode" in err
    assert [p.name for p in paths[0].parent.iterdir()] == [paths[0].name]  # no lock file left

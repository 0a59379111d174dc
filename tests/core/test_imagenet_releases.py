"""ImageNet in both releases: the box-resized .npz batches (the original's) and the benchmark release of van den
Oord et al. (PNG files), each read as it comes, and the release named in what an NLL is reported on."""
import numpy as np

from efficient_vdvae_core.data import dataset_label, make_dataset
from tests.core.data_writers import data_cfg, write_image, write_npz


def test_benchmark_release_png_folders_are_read_and_named(tmp_path):
    train = [write_image(tmp_path / "train" / f"{i:05d}.png", (32, 32), seed=i) for i in range(5)]
    test = [write_image(tmp_path / "test" / f"{i:05d}.png", (32, 32), seed=10 + i) for i in range(3)]
    write_image(tmp_path / "val" / "00000.png", (32, 32), seed=20)
    cfg = data_cfg("imagenet", tmp_path)
    encode, synthesis = make_dataset(cfg, "encode", seed=0), make_dataset(cfg, "test", seed=0)
    assert len(encode) == 5 and len(synthesis) == 3 and synthesis.names == ["00000.png", "00001.png", "00002.png"]
    assert np.array_equal(encode.raw(4), train[4]) and np.array_equal(synthesis.raw(2), test[2])
    label = dataset_label(cfg, "test")
    assert label.startswith("imagenet 32x32, the benchmark release of van den Oord et al. 2016")


def test_each_part_names_its_own_release(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    write_npz(tmp_path / "train" / "train_data_batch_1.npz", images)
    write_npz(tmp_path / "val" / "val_data.npz", images[:2])
    write_image(tmp_path / "test" / "00000.png", (32, 32))
    cfg = data_cfg("imagenet", tmp_path)
    assert dataset_label(cfg, "val") == ("imagenet 32x32, the box-resized release of Chrabaszcz et al. 2017 "
                                         "(.npz batches), as the original code uses")
    assert "benchmark release" in dataset_label(cfg, "test") and len(make_dataset(cfg, "val", seed=0)) == 2
    assert dataset_label(data_cfg("cifar-10", tmp_path), "test") == "cifar-10 32x32"

"""Framework-neutral datasets (NumPy + Pillow): readers, splits, bit reduction, normalisation.

    ds = make_dataset(cfg.data, "train", seed=cfg.run.seed)
    x = ds.load(i, numpy.random.default_rng([seed, epoch, i]))   # float32 (H, W, C)

Modules: `dataset` (splits, preprocessing), `sources` (one reader per dataset_source), `stores` (array,
digit and folder stores), `checks` (every file of a folder checked when it is opened, [data] bad_files),
`decode` (image file -> uint8 pixels: mode rules, 16-bit scaling, size limit), `embedded` (offline
skimage / sklearn data), `downloads` (MNIST, CIFAR-10), `cache` (optional decoded .npy cache).

Fixes of the original's data defects:
* splits are seeded and stable: val / div_stats subsets and training order depend only on `run.seed`
  (the original used unseeded tf.data and the global NumPy RNG); MNIST / CIFAR-10 val/test halves keep
  the original's fixed seed-101 shuffle;
* no flips outside training (the original flipped CIFAR-10 test images during reconstruction);
* float32 everywhere (the original's MNIST div_stats / encode returned float64 images);
* file names (or '<source>_<index>') are available for every split and source (CIFAR-10 encode crashed);
* MNIST div_stats / encode / val / test images are binarised (fixed per image), train is dynamic;
* grayscale custom data works (`channels = 1` converts to 'L'; the original forced RGB);
* folder datasets are read lazily per item; a missing, empty or malformed dataset is one clear error;
  every file of a folder is checked (header and end) when it is opened, not only the first: bad files are
  listed in one error, or left out with [data] bad_files = 'skip';
* 16-bit images are scaled to 8 bits (round(v / 257)) instead of clipped to white; transparency is
  composited over black;
* MNIST / CIFAR-10 download into `download_dir` with md5 checks and resume, no TensorFlow needed.
"""
from efficient_vdvae_core.data.dataset import SPLITS, ImageDataset, make_dataset
from efficient_vdvae_core.data.sources import check_files, dataset_label

__all__ = ["SPLITS", "ImageDataset", "check_files", "dataset_label", "make_dataset"]

"""Evaluation batches of the synthesis modes, with an optional cap on the number of images."""
from efficient_vdvae_jax.data.loaders import EvalBatches
from efficient_vdvae_jax.utils.distributed import n_devices


def eval_batches(loaded, split, batch_size, max_images=None, subset_ratio=None):
    """In-order padded batches over `split` (last partial batch kept), limited to its first `max_images` images."""
    kwargs = {"batch_size": batch_size, "multiple": n_devices(loaded.mesh), "subset_ratio": subset_ratio}
    batches = EvalBatches(loaded.config, split, **kwargs)
    if max_images is not None and max_images < batches.n_images:
        batches = EvalBatches(loaded.config, split, n_samples=max_images, **kwargs)
    return batches

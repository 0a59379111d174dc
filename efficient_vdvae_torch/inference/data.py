"""Evaluation loaders of the synthesis modes, with an optional cap on the number of images."""
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_torch.data.loaders import make_eval_loader


def eval_loader(config, split, batch_size, max_images=None, subset_ratio=None, with_names=False):
    """In-order loader over `split` (last partial batch kept), limited to its first `max_images` images."""
    kwargs = {"batch_size": batch_size, "subset_ratio": subset_ratio, "with_names": with_names}
    loader = make_eval_loader(config, split, **kwargs)
    n = len(loader.dataset)
    if n == 0:
        raise UserError(f"the {split} split of {config.data.dataset_source} has no images; check the [data] paths")
    if max_images is not None and max_images < n:
        loader = make_eval_loader(config, split, n_samples=max_images, **kwargs)
    return loader

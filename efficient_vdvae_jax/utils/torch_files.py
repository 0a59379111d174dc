"""PyTorch checkpoint files read on the JAX side: with the PyTorch side's own reader (needs torch only here)."""
from efficient_vdvae_core.checkpoints import CheckpointError


def _torch_reader(path):
    """efficient_vdvae_torch.utils.checkpoint, the one reader of PyTorch checkpoint files."""
    try:
        from efficient_vdvae_torch.utils import checkpoint
    except ImportError:
        raise CheckpointError(f"{path}: reading a PyTorch checkpoint needs torch (pip install -e '.[torch]')") from None
    return checkpoint


def load_torch_file(path):
    """The dict of a PyTorch checkpoint file (ours or the original's), tensors on the CPU, read as PyTorch reads it."""
    return _torch_reader(path).read_checkpoint(path)


def read_torch_file(path):
    """Weights of a PyTorch checkpoint file (ours or the original's), read as PyTorch reads them."""
    return _torch_reader(path).read_pt_weights(path)

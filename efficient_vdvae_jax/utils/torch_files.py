"""PyTorch checkpoint files read on the JAX side, with torch (needed only here): ours and the original's."""
from pathlib import Path

from efficient_vdvae_core.checkpoints import CheckpointError
from efficient_vdvae_core.weights import Weights


def _reason(exc):
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def load_torch_file(path):
    """The dict of a PyTorch checkpoint file (ours or the original's), tensors on the CPU (needs torch only here)."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: reading a PyTorch checkpoint needs torch (pip install -e '.[torch]')") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({_reason(exc)})") from None
    if not isinstance(state, dict) or "model_state_dict" not in state:
        raise CheckpointError(f"{path}: not an Efficient-VDVAE checkpoint (no 'model_state_dict')")
    return state


def read_torch_file(path):
    """Weights of a PyTorch checkpoint file (ours or the original's)."""
    state = load_torch_file(path)
    original = "format_version" not in state
    step = int(state["step"]) if "step" in state else int(state.get("global_step", -1)) + 1

    def numpy(state_dict):
        return None if state_dict is None else {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    return Weights(params=numpy(state["model_state_dict"]), ema=numpy(state.get("ema_model_state_dict")), step=step,
                   config_dict=None if original else state.get("config"), source=Path(path),
                   kind="original-torch" if original else "torch")

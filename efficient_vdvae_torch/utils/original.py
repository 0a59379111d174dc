"""The original code's checkpoints (either framework) as this side's state: weights, EMA and Adamax state.

`read_original_checkpoint` reads the PyTorch original's `checkpoints-<name>` file or a JAX original's
`checkpoint_<N>` file into an `OriginalCheckpoint` (efficient_vdvae_core.original_checkpoints, which
also says which step a resumed run starts at). `adamax_state_dict` turns its moments into a state_dict
for the torch.optim.Adamax of `build_optimizer`, so that the next update is the one the original
would have made from the same checkpoint.
"""
import torch

from efficient_vdvae_core.original_checkpoints import OriginalCheckpointError, read_original
from efficient_vdvae_torch.utils.checkpoint import read_checkpoint


def read_original_checkpoint(path):
    """OriginalCheckpoint of an original checkpoint file of either framework."""
    return read_original(path, read_checkpoint)


def model_state_dicts(checkpoint):
    """(model state_dict, EMA state_dict or None) of torch tensors, for `load_model_state`."""
    def tensors(arrays):
        return None if arrays is None else {name: torch.from_numpy(a) for name, a in arrays.items()}
    return tensors(checkpoint.params), tensors(checkpoint.ema)


def adamax_state_dict(optimizer, model, checkpoint):
    """A state_dict for `optimizer` (Adamax over `model`'s trainable parameters) with the checkpoint's moments.

    Every parameter gets exp_avg, exp_inf and step = `checkpoint.optimizer_count` (the count the original's
    bias correction used). The param_groups are the optimizer's own (learning rate, betas, eps). Without
    stored moments the state is empty, which is a fresh Adamax.
    """
    if not isinstance(optimizer, torch.optim.Adamax):
        raise OriginalCheckpointError(f"{checkpoint.source}: holds Adamax moments, but the optimizer is "
                                      f"{type(optimizer).__name__}; set [optimizer] type = 'Adamax'")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    own = [p for group in optimizer.param_groups for p in group["params"]]
    if len(own) != len(named) or any(a is not b for a, (_, b) in zip(own, named)):
        raise ValueError("adamax_state_dict: the optimizer must hold the model's trainable parameters in order")
    groups = optimizer.state_dict()["param_groups"]
    if checkpoint.exp_avg is None or checkpoint.optimizer_count == 0:
        return {"state": {}, "param_groups": groups}
    step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32  # torch's choice
    state = {}
    for index, (name, p) in enumerate(named):
        moments = {}
        for key, arrays in (("exp_avg", checkpoint.exp_avg), ("exp_inf", checkpoint.exp_inf)):
            if name not in arrays:
                raise OriginalCheckpointError(f"{checkpoint.source}: no {key} for parameter {name}")
            if tuple(arrays[name].shape) != tuple(p.shape):
                raise OriginalCheckpointError(f"{checkpoint.source}: {key} of {name} has shape "
                                              f"{tuple(arrays[name].shape)}, the model {tuple(p.shape)}")
            moments[key] = torch.from_numpy(arrays[name]).to(device=p.device, dtype=p.dtype)
        state[index] = {"step": torch.tensor(float(checkpoint.optimizer_count), dtype=step_dtype), **moments}
    return {"state": state, "param_groups": groups}

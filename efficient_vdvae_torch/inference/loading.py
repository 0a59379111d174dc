"""The trained model for inference: the run's newest checkpoint (or a given file), EMA or raw weights.

Our checkpoints store the config they were trained with; the model is rebuilt from its [model] and
[loss] sections, whatever the run's config says. Checkpoints of the original code store no config: the
run's config describes their model. Either way a mismatch is one line naming what differs, and there is
never a silent fallback to random weights (the JAX original's bug 19).
"""
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import ConfigError, config_from_dict, is_binarized
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_torch.model.autoencoder import Autoencoder
from efficient_vdvae_torch.utils import checkpoint as ckpt
from efficient_vdvae_torch.utils.distributed import pick_device

MODEL_DATA_KEYS = ("channels", "target_res", "num_bits")  # [data] keys the weights depend on


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on its device, with the config and checkpoint it came from."""
    model: Autoencoder
    config: object  # Config: the run's, with [model] and [loss] of the checkpoint
    arch: object  # Architecture
    device: torch.device
    checkpoint: Path
    step: int  # training iterations completed when the checkpoint was written
    weights: str  # 'ema' or 'raw'


def find_checkpoint(paths, checkpoint=None, log=print):
    """(path, state) of `checkpoint` if given, else of the run's newest readable checkpoint."""
    if checkpoint is not None:
        return Path(checkpoint), ckpt.read_checkpoint(checkpoint)
    if paths.checkpoints.is_file():  # the original's single checkpoint file, used where it lies
        return paths.checkpoints, ckpt.read_checkpoint(paths.checkpoints)
    path, state = ckpt.latest_checkpoint(paths.checkpoints, log=log)
    if state is None:
        raise UserError(f"no checkpoint in {paths.checkpoints}: train the run first (python train.py "
                        "--config ...) or pass --checkpoint PATH")
    return path, state


def checkpoint_config(state, run_config, source, log=print):
    """The config to build the model with: the run's, with [model] and [loss] stored in the checkpoint."""
    if "config" not in state or ckpt.is_original_format(state):
        return run_config
    try:
        stored = config_from_dict(state["config"], source=f"{source} (stored config)")
    except ConfigError as exc:
        raise ckpt.CheckpointError(f"{source}: its stored config cannot be read ({exc})") from None
    run_data, ckpt_data = run_config.data, stored.data
    differ = [f"[data] {k} = {getattr(ckpt_data, k)} in the checkpoint but {getattr(run_data, k)} in the run config"
              for k in MODEL_DATA_KEYS if getattr(ckpt_data, k) != getattr(run_data, k)]
    if is_binarized(ckpt_data) != is_binarized(run_data):
        differ.insert(0, f"[data] dataset_source = {ckpt_data.dataset_source} in the checkpoint but "
                         f"{run_data.dataset_source} in the run config")
    if differ:
        raise ckpt.CheckpointError(f"{source}: trained for other data than this run: " + "; ".join(differ))
    changed = [f"[{section}] {f.name}" for section in ("model", "loss") for f in fields(getattr(stored, section))
               if getattr(getattr(stored, section), f.name) != getattr(getattr(run_config, section), f.name)]
    if changed:
        log(f"Model built from the config stored in {source}; the run config differs in (ignored): "
            + ", ".join(changed))
    try:
        return run_config.replace(model=stored.model, loss=stored.loss)
    except ConfigError as exc:
        raise UserError(f"{source}: the run config does not fit the checkpoint's model: {exc}") from None


def load_model(run_config, paths, checkpoint=None, log=print):
    """LoadedModel of the run (EMA weights if synthesis.load_ema_weights) on the device of run.device."""
    device = pick_device(run_config.run.device)
    path, state = find_checkpoint(paths, checkpoint, log=log)
    config = checkpoint_config(state, run_config, path, log=log)
    use_ema = config.synthesis.load_ema_weights
    key = "ema_model_state_dict" if use_ema else "model_state_dict"
    weights = state.get(key)
    if weights is None:
        raise ckpt.CheckpointError(f"{path}: holds no EMA weights; set --set synthesis.load_ema_weights=False")
    arch = build_architecture(config.model, config.data)
    model = Autoencoder(arch, config.model)
    ckpt.load_model_state(model, weights, path)
    model = model.to(device).eval()
    step = int(state["step"]) if "step" in state else int(state.get("global_step", -1)) + 1
    log(f"{'EMA' if use_ema else 'Raw'} weights loaded from {path} (step {step}), running on {device}")
    return LoadedModel(model=model, config=config, arch=arch, device=device, checkpoint=path, step=step,
                       weights="ema" if use_ema else "raw")

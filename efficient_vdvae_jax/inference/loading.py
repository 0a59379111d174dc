"""The trained model for inference: the run's newest checkpoint (or a given one), EMA or raw weights.

Our checkpoints store the config they were trained with; the model is rebuilt from its [model] and
[loss] sections, whatever the run's config says. PyTorch checkpoints of the original code store no
config: the run's config describes their model. A mismatch is one line naming what differs, and there
is never a silent fallback to random weights (the JAX original's bug 19).
"""
from dataclasses import dataclass, fields
from pathlib import Path

import jax
import jax.numpy as jnp

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_jax.model.autoencoder import build_model
from efficient_vdvae_jax.utils import distributed as D
from efficient_vdvae_jax.utils.checkpoint import CheckpointError, latest_folder
from efficient_vdvae_jax.utils.state import split_model
from efficient_vdvae_jax.utils.weights import check_shapes, load_weights_file, stored_config

MODEL_DATA_KEYS = ("channels", "target_res", "num_bits")  # [data] keys the weights depend on


@dataclass(frozen=True)
class LoadedModel:
    """Replicated parameters on the mesh with the model structure, config and checkpoint they came from."""
    graphdef: object
    rest: object
    params: dict  # pure dict of jax.Arrays, replicated over `mesh`
    config: object  # Config: the run's, with [model] and [loss] of the checkpoint
    arch: object  # Architecture
    mesh: object
    checkpoint: Path
    step: int  # training iterations completed when the checkpoint was written
    weights: str  # 'ema' or 'raw'


def find_checkpoint(paths, checkpoint=None):
    """The given checkpoint, else the run's newest Orbax folder; UserError if the run has none."""
    if checkpoint is not None:
        return Path(checkpoint)
    folder = latest_folder(paths.checkpoints)
    if folder is None:
        raise UserError(f"no checkpoint in {paths.checkpoints}: train the run first (python train.py "
                        "--config ...) or pass --checkpoint PATH")
    return folder


def checkpoint_config(config_dict, run_config, source, log=print):
    """The config to build the model with: the run's, with [model] and [loss] stored in the checkpoint."""
    if config_dict is None:
        return run_config
    stored = stored_config(config_dict, source)
    run_data, ckpt_data = run_config.data, stored.data
    differ = [f"[data] {k} = {getattr(ckpt_data, k)} in the checkpoint but {getattr(run_data, k)} in the run config"
              for k in MODEL_DATA_KEYS if getattr(ckpt_data, k) != getattr(run_data, k)]
    if is_binarized(ckpt_data) != is_binarized(run_data):
        differ.insert(0, f"[data] dataset_source = {ckpt_data.dataset_source} in the checkpoint but "
                         f"{run_data.dataset_source} in the run config")
    if differ:
        raise CheckpointError(f"{source}: trained for other data than this run: " + "; ".join(differ))
    changed = [f"[{section}] {f.name}" for section in ("model", "loss") for f in fields(getattr(stored, section))
               if getattr(getattr(stored, section), f.name) != getattr(getattr(run_config, section), f.name)]
    if changed:
        log(f"Model built from the config stored in {source}; the run config differs in (ignored): "
            + ", ".join(changed))
    try:
        return run_config.replace(model=stored.model, loss=stored.loss)
    except UserError as exc:
        raise UserError(f"{source}: the run config does not fit the checkpoint's model: {exc}") from None


def load_model(run_config, paths, checkpoint=None, mesh=None, log=print):
    """LoadedModel of the run (EMA weights if synthesis.load_ema_weights), replicated over every device."""
    mesh = D.make_mesh() if mesh is None else mesh
    path = find_checkpoint(paths, checkpoint)
    weights = load_weights_file(path)
    config = checkpoint_config(weights.config_dict, run_config, path, log=log)
    check_shapes(weights, config)
    use_ema = config.synthesis.load_ema_weights
    params = weights.ema if use_ema else weights.params
    if params is None:
        raise CheckpointError(f"{path}: holds no EMA weights; set --set synthesis.load_ema_weights=False")
    graphdef, _, rest = split_model(build_model(config))
    params = D.put_replicated(mesh, jax.tree.map(jnp.asarray, params))
    log(f"{'EMA' if use_ema else 'Raw'} weights loaded from {path} (step {weights.step}), running on "
        f"{D.n_devices(mesh)} device(s)")
    return LoadedModel(graphdef=graphdef, rest=rest, params=params, config=config,
                       arch=build_architecture(config.model, config.data), mesh=mesh, checkpoint=path,
                       step=weights.step, weights="ema" if use_ema else "raw")

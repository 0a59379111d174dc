"""Which weights a synthesis runs with: the run's newest readable checkpoint, or a given one; EMA or raw.

The newest checkpoint that can be read is used; unreadable ones are named and skipped, and none readable
is an error (never random weights). Checkpoints store the config they were trained with: the model is
built from its [model] and [loss] sections, whatever the run's config says; the original code's files
store none, so the run's config describes their model. A mismatch is one line naming what differs.
"""
from pathlib import Path

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.checkpoints import Checkpoint, CheckpointError, CheckpointFolder, original_candidates
from efficient_vdvae_core.encodings import model_fingerprint
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.synthesis.common import Loaded
from efficient_vdvae_core.weights import WeightsError, check_fits, model_config


class _WeightsCodec:
    """The reading side of a framework's checkpoints, as Weights (for the fall-back past unreadable ones)."""

    def __init__(self, framework):
        self.suffix = framework.checkpoint_suffix
        self.framework = framework

    def read(self, path):
        weights = self.framework.read_weights(path)
        return Checkpoint(meta={"step": weights.step}, state=weights)


def find_weights(paths, framework, checkpoint=None, log=print):
    """Weights of `checkpoint` if given, else of the run's newest readable checkpoint."""
    if checkpoint is not None:
        if not Path(checkpoint).exists():
            raise CheckpointError(f"{checkpoint}: checkpoint not found")
        return framework.read_weights(checkpoint)
    if paths.checkpoints.is_file():  # the original's single checkpoint file, used where it lies
        return framework.read_weights(paths.checkpoints)
    folder = CheckpointFolder(paths.checkpoints, _WeightsCodec(framework))
    path, found = folder.latest(log=log, extra=original_candidates(paths.checkpoints, framework.checkpoint_suffix))
    if found is None:
        raise UserError(f"no checkpoint in {paths.checkpoints}: train the run first (python train.py "
                        "--config ...) or pass --checkpoint PATH")
    return found.state


def load_weights(run_config, paths, framework, checkpoint=None, log=print):
    """(Loaded, parameters) for a synthesis: EMA weights if synthesis.load_ema_weights, else the raw ones."""
    weights = find_weights(paths, framework, checkpoint, log=log)
    config = model_config(weights, run_config, log=log)
    check_fits(weights, framework.param_shapes(config))
    use_ema = config.synthesis.load_ema_weights
    params = weights.ema if use_ema else weights.params
    if params is None:
        raise WeightsError(f"{weights.source}: holds no EMA weights; set --set synthesis.load_ema_weights=False")
    kind = "ema" if use_ema else "raw"
    log(f"{'EMA' if use_ema else 'Raw'} weights loaded from {weights.source} (step {weights.step})")
    loaded = Loaded(config=config, arch=build_architecture(config.model, config.data), checkpoint=weights.source,
                    step=weights.step, weights=kind, fingerprint=model_fingerprint(config, params))
    return loaded, params

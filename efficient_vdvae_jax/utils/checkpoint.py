"""Numbered Orbax checkpoints under checkpoints-<run.name>/: checkpoint_<step>/{state,meta}.

`state` is the TrainState pytree (params, EMA params, optimizer state, step and skip counters, all
jax.Arrays); `meta` is JSON: the step, the skip counters and the resolved config dict. `step` = number
of completed training iterations (training resumes at that iteration), as the PyTorch side's
`checkpoint_<step>.pt`. Orbax writes each checkpoint into a temporary folder and renames it when it is
complete, and keeps the newest `max_allowed_checkpoints`.
"""
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from efficient_vdvae_core.errors import UserError

STEP_PREFIX = "checkpoint"


class CheckpointError(UserError):
    """A checkpoint that cannot be used, with the folder named."""


def _manager(directory, keep=None, read_only=False):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, step_prefix=STEP_PREFIX, create=not read_only,
                                           read_only=read_only)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def on_device(shapes, device):
    """A restore target: ShapeDtypeStructs (e.g. from jax.eval_shape) placed on one device."""
    sharding = jax.sharding.SingleDeviceSharding(device)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


class CheckpointStore:
    """Save and restore the numbered checkpoints of one run folder."""

    def __init__(self, directory, keep):
        self.directory = Path(directory)
        self.manager = _manager(self.directory, keep)

    def steps(self):
        return list(self.manager.all_steps())

    def path(self, step):
        return self.directory / f"{STEP_PREFIX}_{step}"

    def save(self, step, state, meta):
        """Start writing checkpoint_<step> (asynchronously; `wait` or `close` finishes it); returns its path."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)))
        return self.path(step)

    def restore_latest(self, abstract_state, log=print):
        """(step, state, meta) of the newest readable checkpoint, falling back past broken ones; None if none."""
        steps = sorted(self.steps(), reverse=True)
        for i, step in enumerate(steps):
            try:
                return (step, *restore(self.manager, step, abstract_state))
            except Exception as exc:  # a truncated or foreign folder: say so and try the previous one
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                nxt = f"falling back to {STEP_PREFIX}_{steps[i + 1]}" if i + 1 < len(steps) else "no older checkpoint"
                log(f"warning: {self.path(step)}: unreadable checkpoint ({reason}); {nxt}")
        return None

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def restore(manager, step, abstract_state):
    """(state, meta) of one step of an open CheckpointManager."""
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                             meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]


def read_meta(folder):
    """The JSON meta (step, counters, config dict) of a checkpoint folder checkpoint_<step>/."""
    folder = Path(folder)
    step = parse_step(folder)
    with _manager(folder.parent, read_only=True) as manager:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def read_checkpoint(folder, abstract_state):
    """(state, meta) of a checkpoint folder checkpoint_<step>/, restored onto `abstract_state`'s shardings."""
    folder = Path(folder)
    step = parse_step(folder)
    with _manager(folder.parent, read_only=True) as manager:
        try:
            return restore(manager, step, abstract_state)
        except Exception as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise CheckpointError(f"{folder}: unreadable checkpoint ({reason})") from None


def parse_step(folder):
    """The step of a folder named checkpoint_<step>; CheckpointError otherwise."""
    folder = Path(folder)
    prefix = f"{STEP_PREFIX}_"
    if not (folder.is_dir() and folder.name.startswith(prefix) and folder.name[len(prefix):].isdigit()):
        raise CheckpointError(f"{folder}: not an Orbax checkpoint folder named {STEP_PREFIX}_<step>")
    return int(folder.name[len(prefix):])


def latest_folder(directory):
    """The newest checkpoint_<step>/ folder of a run, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    with _manager(directory, read_only=True) as manager:
        step = manager.latest_step()
    return None if step is None else directory / f"{STEP_PREFIX}_{step}"

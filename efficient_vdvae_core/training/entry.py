"""`train.py` of both frameworks: checks before anything is written, the run's lock and folder, then the loop.

Nothing of the run is written for a config, data, checkpoint or argument problem, nor when another
process trains the same run in the same folder (`logs-<name>/.lock`, held by the main process until
the end): every check below runs before the run's config is saved.
"""
import contextlib
import os
import sys

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.checkpoints import CheckpointError, CheckpointFolder
from efficient_vdvae_core.config import load_config
from efficient_vdvae_core.data import check_files, make_dataset
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.memory import check_fits_memory, training_memory
from efficient_vdvae_core.precision import check_precision
from efficient_vdvae_core.runs import RunLock, resolve_run_config, run_paths
from efficient_vdvae_core.training.loop import run_training
from efficient_vdvae_core.training.preemption import StopRun
from efficient_vdvae_core.weights import check_fits


def check_training_inputs(config, paths, framework, dist, init_checkpoint=None):
    """Refuse, before anything of the run is written, options, data and weights that cannot work.

    The batch must split over the replicas; one training step (after the data checks) must fit the memory of a replica (the floor
    of `efficient_vdvae_core.memory`: parameters and activations); the train and validation splits must open (a missing or
    empty folder, a file that is not an image, too few images: one line naming the key and the path;
    the train split of 'imagenet' without decoded_cache is loaded into memory when opened, so only its
    files' headers are checked here); the newest readable checkpoint of the run, or for a run without
    checkpoints `init_checkpoint`, must fit the model.
    """
    framework.check_options(config)
    check_precision(config, *framework.bf16_support(dist))
    if config.train.batch_size % dist.n_shards:
        raise UserError(f"[train] batch_size = {config.train.batch_size} is not divisible by the {dist.n_shards} "
                        f"replicas ({dist.description}); choose a multiple of {dist.n_shards}")
    data = config.data
    if data.dataset_source == "imagenet" and not data.decoded_cache:
        check_files(data, "train")  # the .npz batches are loaded into memory when the split is opened
    else:
        train = make_dataset(data, "train", seed=config.run.seed)
        if len(train) < config.train.batch_size:
            raise UserError(f"the train split of {data.dataset_source} has {len(train)} images, fewer than "
                            f"[train] batch_size = {config.train.batch_size}")
    make_dataset(data, "val", seed=config.run.seed, n_samples=config.val.n_samples_for_validation)
    estimate = training_memory(config, build_architecture(config.model, config.data),
                               config.train.batch_size // dist.n_shards)
    check_fits_memory(estimate, *framework.memory_available(dist))
    found = CheckpointFolder(paths.checkpoints, _Suffix(framework)).list()
    if found:
        check_resumable(found, framework, config)
    if init_checkpoint is None or found or paths.checkpoints.is_file():
        return
    check_fits(framework.read_weights(init_checkpoint), framework.param_shapes(config),
               what=f"does not match the model of [run] name = {config.run.name}")


def check_resumable(found, framework, config):
    """The newest readable of the (step, path) checkpoints `found` must fit the model of `config`.

    Unreadable ones are left to the training loop, which names each and falls back past it.
    """
    for _, path in reversed(found):
        try:
            weights = framework.read_weights(path)
        except CheckpointError:
            continue
        check_fits(weights, framework.param_shapes(config))
        return


class _Suffix:
    """The part of a codec that listing needs."""

    def __init__(self, framework):
        self.suffix = framework.checkpoint_suffix


def wait_for_the_main_process(framework, main):
    """A barrier after the main process's checks; a main process that failed them exits without it, and then
    the others end with exit code 2 and no message (run_main prints none in them), or are stopped by the launcher."""
    try:
        framework.barrier()
    except Exception:  # the collective fails when the main process has gone
        if main:
            raise
        raise UserError("the main process stopped before training; its message says why") from None


def train_main(args, framework):
    """Lock the run, check its config and data before the main process saves the config, train."""
    given, _ = load_config(args.config, args.overrides)
    if args.from_checkpoint is not None and not os.path.exists(args.from_checkpoint):
        raise UserError(f"--from-checkpoint {args.from_checkpoint}: file not found")
    framework.check_options(given)
    dist = framework.init_distributed(given)
    main = dist.is_main

    def check(config, paths):
        check_training_inputs(config, paths, framework, dist, init_checkpoint=args.from_checkpoint)

    lock = RunLock(run_paths(given.run.name, args.workdir).logs) if main else contextlib.nullcontext()
    try:
        with lock:
            if main:
                config, paths = resolve_run_config(args.config, args.overrides, args.workdir, mode="train", check=check,
                                                   verbose=getattr(args, "verbose", False))
            wait_for_the_main_process(framework, main)
            if not main:  # reads the copy the main process saved; never writes
                config, paths = resolve_run_config(args.config, args.overrides, args.workdir, mode="inference",
                                                   log=lambda *a, **k: None)
            if main:
                print(f"Running on {dist.description}")
            code = 0
            try:
                run_training(config, paths, framework, dist, init_checkpoint=args.from_checkpoint)
            except StopRun as stop:  # SIGTERM or Ctrl-C: checkpoint written, lock released below
                code = stop.code
    except BaseException:
        if dist.n_processes == 1:  # several: no shutdown barrier, which a process that failed alone would wait at
            framework.shutdown()  # (or pass a failed main process's first barrier); the launcher stops the others
        raise
    framework.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.n_processes > 1:
        os._exit(code)  # gloo can abort in its destructors at interpreter exit once the work is done
    if code:
        raise SystemExit(code)

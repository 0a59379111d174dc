"""The training driver of both frameworks: resume, the step loop, evaluation, sample grids, checkpoints.

One counter drives everything: `step` = the number of completed training iterations. Iteration `step`
uses the schedules of `step` (0-based; skipped updates still advance it), its data batch and latent
noise are functions of (run.seed, step), and the checkpoint written after it is `checkpoint_<step + 1>`.
So a run killed at any point and started again from its last complete checkpoint ends with the same
parameters as a run never interrupted, and 1 or N processes (same global batch) train the same run.

Every `checkpoint_and_eval_interval_in_steps` steps (and at the last one): validation on the fixed
validation subset with the raw weights (noise per image: the NELBO does not depend on the interval or
the process count), TensorBoard scalars, histograms and images, a PNG grid (targets,
reconstructions, EMA prior samples) and its enlarged view, then a checkpoint; at the end of a run on
labelled digits, the classifier score of prior samples (efficient_vdvae_core/training/quality.py). Faults end the run with one line: a failed
checkpoint write (by [run] checkpoint_write_failure), a full disk while writing logs, and
[train] max_consecutive_skips skipped updates in a row.
"""
import math
import re
import time

import numpy as np
from tqdm import tqdm

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.checkpoints import Checkpoint, CheckpointFolder, adopt_original_file, disk_error_message
from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.data import dataset_label, make_dataset
from efficient_vdvae_core.errors import LostProcessError, UserError
from efficient_vdvae_core.evaluation import EvalAccumulator, EvalPlan, EvalRows
from efficient_vdvae_core.images import make_grid
from efficient_vdvae_core.metrics import effective_pixels, report_unit_name
from efficient_vdvae_core.randomness import TRAIN_EVALUATION
from efficient_vdvae_core.schedules import step_values
from efficient_vdvae_core.tensorboard import RunLogger
from efficient_vdvae_core.training import tags
from efficient_vdvae_core.training.images import grid_images, images_to_uint8
from efficient_vdvae_core.training.quality import classifier_report, grid_message, save_sample_grids
from efficient_vdvae_core.training.preemption import StopRequests, StopRun, signal_name

CHECKPOINT_FORMAT_VERSION = 1


class TooManySkipsError(UserError):
    """Training stopped because too many consecutive updates were skipped."""


def _silent(*args, **kwargs):
    """The log function of processes other than 0."""


def run_training(config, paths, framework, dist, *, log=print, init_checkpoint=None, progress=True):
    """Train the run until [train] total_train_steps; returns the finished TrainingRun.

    SIGTERM or a first Ctrl-C stop it cleanly at a step boundary with a checkpoint (StopRun, see
    efficient_vdvae_core.training.preemption).
    """
    log = log if dist.is_main else _silent
    run = TrainingRun(config, paths, framework, dist, log)
    try:
        run.resume(init_checkpoint)
        if run.step >= config.train.total_train_steps:
            log(f"Run '{config.run.name}' already finished ({run.step} of {config.train.total_train_steps} steps); "
                "nothing to do. To train it further, run the same command with --set "
                f"train.total_train_steps=N (N > {run.step}); --set values apply on top of the run's saved config")
            return run
        with StopRequests() as stops:
            run.train(progress and dist.is_main, stops)
    except OSError as exc:
        message = disk_error_message(exc, run.folder)
        if message is None:
            raise
        raise UserError(message) from None
    except Exception as exc:
        if dist.n_processes == 1 or not run.backend.is_lost_process(exc):
            raise
        raise LostProcessError(lost_process_message(exc, dist, run)) from None
    finally:
        run.close()
    log(f"Finished training after {run.step} steps. Logs: {paths.logs}  Checkpoints: {paths.checkpoints}")
    return run


def lost_process_message(exc, dist, run):
    """The line of a process whose collective failed because another process of the job stopped or hung."""
    reason = re.sub(r"^\[[^\]]*\] ", "", str(exc).strip().splitlines()[0])  # without the C++ source location
    reason = reason.split(". ")[0].rstrip(".")
    return (f"process {dist.process_index} of {dist.n_processes} lost contact with the others at step {run.step} "
            f"({reason}): a node or process of the job stopped, or hung longer than the collective timeout; "
            f"{run.folder.newest_intact()}; run the same command on every node to resume")


class TrainingRun:
    """The counters, folders and loggers of one training run around a framework's TrainBackend."""

    def __init__(self, config, paths, framework, dist, log):
        self.config, self.paths, self.framework, self.dist, self.log = config, paths, framework, dist, log
        self.backend = framework.trainer(config, dist, log)
        self.folder = CheckpointFolder(paths.checkpoints, self.backend.codec)
        self.step, self.skips, self.consecutive_skips = 0, 0, 0
        self.saved_step = None  # the step of the newest checkpoint this process wrote or resumed from
        self.last_batch = None  # this process's rows of the last training batch (evaluated at evaluation steps)
        self.logger = None  # opened when training starts: a run with nothing to do writes no event files
        self.binarized = is_binarized(config.data)
        self.n_layers = build_architecture(config.model, config.data).n_latent_layers

    # ----------------------------------------------------------------------------------- resume
    def resume(self, init_checkpoint=None):
        """Continue from the newest readable checkpoint, or start from `init_checkpoint`'s weights, or from scratch."""
        if self.dist.is_main:
            adopt_original_file(self.paths.checkpoints, log=self.log)
            removed = self.folder.remove_temporaries()
            if removed:
                self.log(f"Removed {len(removed)} incomplete checkpoint file(s) of an interrupted write: "
                         + ", ".join(removed))
        self.backend.barrier()
        path, checkpoint = self.folder.latest(log=self.log, extra=self.backend.codec.extra_candidates(self.folder.directory))
        if checkpoint is None and init_checkpoint is not None:
            self.backend.load_weights(self.framework.read_weights(init_checkpoint))
            self.log(f"Initialised weights from {init_checkpoint} (fine-tuning from step 0)")
            return
        if checkpoint is None:
            self.log(f"No checkpoint in {self.paths.checkpoints}: starting from scratch")
            return
        resume_from_ema = self.config.train.resume_from_ema
        self.backend.load_state(checkpoint, resume_from_ema)
        meta = checkpoint.meta
        self.step = self.saved_step = int(meta["step"])
        self.skips, self.consecutive_skips = int(meta.get("skips", 0)), int(meta.get("consecutive_skips", 0))
        if resume_from_ema:
            self.log("Resuming from the EMA weights (train.resume_from_ema)")
        if meta.get("original"):
            self.log(f"Resumed from the original-format checkpoint {path} at step {self.step} "
                     f"({meta.get('resume_note', 'its optimizer state is not loaded: moments restart at zero')})")
        else:
            self.log(f"Resumed from {path} at step {self.step}")

    def meta(self):
        """The plain part of a checkpoint written now."""
        return {"format_version": CHECKPOINT_FORMAT_VERSION, "step": self.step, "skips": self.skips,
                "consecutive_skips": self.consecutive_skips, "global_step": self.step - 1,
                "framework": self.framework.name, "config": self.config.to_dict()}

    def save(self):
        """Write checkpoint_<step> by the write-failure policy: the main process alone, or every process for a
        collective codec (Orbax); the main one prunes."""
        run = self.config.run
        path = self.folder.path(self.step)
        if self.dist.is_main or self.backend.codec.collective:
            checkpoint = Checkpoint(meta=self.meta(), state=self.backend.state())
            path = self.folder.save(self.step, checkpoint, keep=run.max_allowed_checkpoints,
                                    on_failure=run.checkpoint_write_failure, retries=run.checkpoint_write_retries,
                                    log=self.log, prune=self.dist.is_main)
        self.backend.barrier()
        self.saved_step = self.step
        self.log(f"Saved checkpoint {path}")
        return path

    # ------------------------------------------------------------------------------------- loop
    def train(self, progress, stops=None):
        cfg = self.config
        total, interval = cfg.train.total_train_steps, cfg.train.checkpoint_and_eval_interval_in_steps
        train_set = make_dataset(cfg.data, "train", seed=cfg.run.seed)
        self.val_set = make_dataset(cfg.data, "val", seed=cfg.run.seed, n_samples=cfg.val.n_samples_for_validation)
        self.val_label = dataset_label(cfg.data, "val")  # the NLL's dataset (and ImageNet release)
        self.logger = RunLogger(self.paths, enabled=self.dist.is_main)
        unit = "nats" if self.binarized else "bpd"
        bar = tqdm(total=total, initial=self.step, disable=not progress, dynamic_ncols=True, desc=cfg.run.name,
                   unit="step")
        t_last = time.perf_counter()
        try:
            for batch in self.backend.train_batches(train_set, self.step):
                self._stop_if_asked(stops)
                values = step_values(self.step, cfg)
                out = self.backend.train_step(batch, values)
                self.last_batch = batch
                self._count(out)
                now = time.perf_counter()
                seconds, t_last = now - t_last, now
                scalars = tags.train_scalars(out, values, self, seconds)
                bar.update(1)
                bar.set_postfix_str(f"{seconds:.2f}s/step nelbo {scalars[tags.NELBO]:.3f} {unit} kl "
                                    f"{scalars[tags.KL]:.3f} gnorm {out.grad_norm:.1f} skips {self.skips}", refresh=False)
                if self.step % cfg.train.logging_interval_in_steps == 0 or self.step == total:
                    self.logger.scalars("train", self.step, scalars)
                self._stop_if_skipping(out, values)
                if self.step % interval == 0 or self.step == total:
                    self.evaluate_and_save()
                    t_last = time.perf_counter()
                if self.step >= total:
                    break
        finally:
            bar.close()
        if self.step >= total:
            classifier_report(self)

    def _stop_if_asked(self, stops):
        """At a step boundary: when any process got SIGTERM or Ctrl-C, checkpoint this step and stop (StopRun)."""
        if stops is None:
            return
        local = np.array([1.0 if stops.requested else 0.0, float(stops.signal or 0)])
        agreed = self.backend.all_reduce_sum(local) if self.dist.n_processes > 1 else local
        if agreed[0] == 0:
            return
        signum = stops.signal or (int(agreed[1] / agreed[0]) if agreed[0] else None)
        if self.saved_step != self.step:
            self.save()
        self.log(f"Stopped by {signal_name(signum)} after step {self.step} of {self.config.train.total_train_steps}, "
                 f"checkpoint {self.folder.path(self.step)} written; run the same command to resume")
        raise StopRun(stops.exit_code(signum))

    def _count(self, out):
        self.step += 1
        if out.skipped:
            self.skips += 1
            self.consecutive_skips += 1
        else:
            self.consecutive_skips = 0

    def _stop_if_skipping(self, out, values):
        limit = self.config.train.max_consecutive_skips
        if not limit or self.consecutive_skips < limit:
            return
        if math.isfinite(out.grad_norm):
            advice = ("lower [optimizer] learning_rate, raise gradient_skip_threshold or enable clip_gradient_norm "
                      "(--set ... on the same command), then run it again to resume")
        else:
            advice = ("the loss or the gradients are NaN/inf, so the weights have probably diverged: lower [optimizer] "
                      "learning_rate or enable clip_gradient_norm, and resume from a checkpoint written before the "
                      "divergence (delete the newer ones)")
        raise TooManySkipsError(
            f"stopped at step {self.step}: the last {limit} updates were all skipped (gradient norm "
            f"{out.grad_norm:.4g}, skip threshold {values.skip_threshold}, [train] max_consecutive_skips = {limit}); "
            f"{self.folder.newest_intact()}; {advice}")

    # ------------------------------------------------------------------------------- evaluation
    def evaluate(self):
        """Validation metrics (raw weights, every process) and the details of the first batch."""
        cfg = self.config
        plan = EvalPlan(len(self.val_set), cfg.val.batch_size, n_shards=self.dist.n_shards,
                        n_processes=self.dist.n_processes, process_index=self.dist.process_index)
        acc = EvalAccumulator(self.n_layers, self.binarized, effective_pixels(cfg.data))
        first = None
        for rows, batch in zip(plan, self.backend.eval_batches(self.val_set, plan)):
            out = self.backend.evaluate(batch, rows, self.step, details=first is None)
            acc.add(out, rows.valid)
            if first is None:
                first = (out, rows)
        return acc.result(self.backend.all_reduce_sum, cfg.metrics.latent_active_threshold), first

    def evaluate_train_batch(self):
        """Metrics and details of the last training batch (raw weights, its own noise), for the train writer."""
        n_local = len(self.last_batch)  # this process's rows (a tensor or array: its first axis)
        start = self.dist.process_index * n_local
        rows = EvalRows(index=0, start=0, images=np.arange(start, start + n_local), valid=np.ones(n_local, bool),
                        stop=start + n_local)
        out = self.backend.evaluate(self.last_batch, rows, self.step, details=True,  # the same on every process
                                    purpose=TRAIN_EVALUATION)
        acc = EvalAccumulator(self.n_layers, self.binarized, effective_pixels(self.config.data))
        acc.add(out, rows.valid)
        return acc.result(self.backend.all_reduce_sum, self.config.metrics.latent_active_threshold), out

    def log_evaluated_batch(self, split, out, n, metrics=None, label=None):
        """TensorBoard of one evaluated batch: scalars (if given; JSON lines labelled `label`), histograms, grids."""
        if metrics is not None:
            self.logger.scalars(split, self.step, metrics, label=label)
        for tag, values, bins in tags.evaluation_histograms(out, n):
            self.logger.histogram(split, self.step, tag, values, bins)
        targets = images_to_uint8(out.inputs[:n], self.config)
        recons = images_to_uint8(out.samples[:n], self.config)
        self.logger.image(split, self.step, tags.ORIGINAL, make_grid(targets))
        self.logger.image(split, self.step, tags.GENERATED, make_grid(recons))
        return targets, recons

    def evaluate_and_save(self):
        metrics, (first, rows) = self.evaluate()
        train_metrics, train_out = self.evaluate_train_batch()
        unit = report_unit_name(self.binarized)
        self.log(f"\nValidation step {self.step} | reconstruction {metrics['reconstruction_loss']:.4f} | KL "
                 f"{metrics['kl_div']:.4f} | NELBO {metrics['nelbo']:.6f} {unit} | SSIM {metrics['ssim']:.4f} | "
                 f"active groups {metrics['active_groups']}/{self.n_layers} ({self.val_label})")
        prior, prior_means = self.backend.prior_samples(grid_images(), self.step)
        histograms = tags.parameter_histograms(self.backend.parameters_and_gradients()) if self.dist.is_main else []
        if self.dist.is_main:
            n = min(grid_images(), rows.n_valid)
            last_values = step_values(self.step - 1, self.config)  # of the iteration just done, as the train writer's
            targets, recons = self.log_evaluated_batch("val", first, n, tags.val_scalars(metrics, last_values))
            self.log_evaluated_batch("train", train_out, min(grid_images(), len(train_out.ssim)),
                                     {tags.SSIM: train_metrics["ssim"]}, label="train_batch")
            for tag, values, bins in histograms:
                self.logger.histogram("train", self.step, tag, values, bins)
            prior_u8 = images_to_uint8(prior, self.config)
            self.logger.image("val", self.step, tags.PRIOR_SAMPLES, make_grid(prior_u8))
            means_rows = None
            if first.means is not None and prior_means is not None:
                means_rows = [targets] + [images_to_uint8(m[:n], self.config) for m in (first.means, prior_means)]
            written = save_sample_grids(self.paths.logs / "samples", self.step, [targets, recons, prior_u8[:n]],
                                        means_rows)
            self.log(grid_message(written))
            self.logger.flush()
        self.save()
        return metrics

    def close(self):
        if self.logger is not None:
            self.logger.close()
        self.backend.close()

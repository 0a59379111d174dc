"""The PyTorch training loop: one process or many (torchrun), exact resume, evaluation, logging.

One counter drives everything: `step` = the number of completed training iterations. Iteration
`step` uses the learning rate, KL beta and gamma of `step` (0-based; skipped updates still advance
it), its data batch and latent noise are functions of (seed, step), and a checkpoint written after
it is `checkpoint_<step + 1>.pt`. So a run killed at any point and started again from its last
complete checkpoint ends with the same parameters as a run never interrupted.

Faults end the run with one line (a UserError, exit code 2), never with a half-written checkpoint:
a checkpoint write that fails (disk full, I/O error) stops the run or is retried
(`[run] checkpoint_write_failure`), a full disk while writing logs stops it, and so do
`[train] max_consecutive_skips` skipped updates in a row (non-finite or too large gradients).
"""
import errno
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.data import make_dataset
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import make_grid, save_png
from efficient_vdvae_core.schedules import learning_rate
from efficient_vdvae_core.tensorboard import RunLogger
from efficient_vdvae_torch.data.loaders import make_eval_loader, make_train_loader
from efficient_vdvae_torch.evaluation import (MetricAccumulator, evaluate_batch, images_to_uint8, latent_noise,
                                              output_samples, step_seed)
from efficient_vdvae_torch.model.autoencoder import Autoencoder
from efficient_vdvae_torch.model.losses import LN2, effective_pixels, split_mol_logits, vae_objective
from efficient_vdvae_torch.utils import checkpoint as ckpt
from efficient_vdvae_torch.utils.distributed import all_reduce_sum, barrier
from efficient_vdvae_torch.utils.optim import (EMA, apply_weight_decay, build_optimizer, clip_gradients,
                                               decayed_parameters, gradient_norm, set_learning_rate, should_skip)

N_IMAGES = 8  # images per grid in TensorBoard and the samples PNG
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}  # the disk, not the code


class TooManySkipsError(UserError):
    """Training stopped because too many consecutive updates were skipped."""


def check_training_inputs(config, paths, init_checkpoint=None):
    """Refuse, before anything of the run is written, data that cannot be read and weights that do not fit.

    Opens the train and validation splits (a missing folder, an empty one, a file that is not an image,
    too few images for the batch sizes: one line naming the key and the path). The train split of
    'imagenet' without decoded_cache is loaded into memory when opened, so only its folder is checked
    here. For a run without checkpoints, `init_checkpoint` (--from-checkpoint) must fit the model.
    """
    data = config.data
    if data.dataset_source == "imagenet" and not data.decoded_cache:
        folder = Path(os.path.expanduser(data.train_data_path)).absolute()
        if not folder.is_dir():
            raise UserError(f"[data] train_data_path = '{data.train_data_path}': folder {folder} not found; "
                            "prepare the dataset (data_scripts/) or fix the path")
    else:
        train = make_dataset(data, "train", seed=config.run.seed)
        if len(train) < config.train.batch_size:
            raise UserError(f"the train split of {data.dataset_source} has {len(train)} images, fewer than "
                            f"[train] batch_size = {config.train.batch_size}")
    make_dataset(data, "val", seed=config.run.seed, n_samples=config.val.n_samples_for_validation)
    if init_checkpoint is None or ckpt.list_checkpoints(paths.checkpoints) or paths.checkpoints.is_file():
        return
    state = ckpt.read_checkpoint(init_checkpoint)
    with torch.device("meta"):
        own = Autoencoder(build_architecture(config.model, config.data), config.model).state_dict()
    problem = ckpt.mismatch_message(own, state["model_state_dict"])
    if problem:
        raise ckpt.CheckpointError(f"--from-checkpoint {init_checkpoint}: does not match the model of "
                                   f"[run] name = {config.run.name}; {problem}")


def build_training_model(config, device):
    """The model, seeded by run.seed, on `device` (channels-last when configured)."""
    torch.manual_seed(config.run.seed)
    arch = build_architecture(config.model, config.data)
    model = Autoencoder(arch, config.model).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class Trainer:
    """Owns the model, EMA, optimizer and counters of one training run."""

    def __init__(self, config, paths, dist, log=print, init_checkpoint=None):
        self.config, self.paths, self.dist, self.log = config, paths, dist, log
        self.device = dist.device
        self.arch = build_architecture(config.model, config.data)
        self.model = build_training_model(config, self.device)
        self.ema = EMA(self.model, config.train.ema_decay)
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.decayed = decayed_parameters(self.model) if config.loss.use_weight_decay else []
        self.step, self.skips, self.consecutive_skips = 0, 0, 0
        self._resume(init_checkpoint)
        self.forward_model = self.model
        if config.train.activation_checkpointing:
            self.model.bottom_up.checkpoint_blocks = self.model.top_down.checkpoint_blocks = True
        if config.train.compile:
            self.forward_model = torch.compile(self.model)
        if dist.world_size > 1:
            self.forward_model = DistributedDataParallel(
                self.forward_model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.local_batch = config.train.batch_size // dist.world_size

    # ----------------------------------------------------------------------------------- resume
    def _resume(self, init_checkpoint):
        if self.dist.is_main:
            ckpt.adopt_original_file(self.paths.checkpoints, log=self.log)
            removed = ckpt.remove_temporaries(self.paths.checkpoints)
            if removed:
                self.log(f"Removed {len(removed)} incomplete checkpoint file(s) of an interrupted write: "
                         + ", ".join(removed))
        barrier()
        # Read on the CPU: a device out of memory must not pass for an unreadable file. Loading copies to the device.
        path, state = ckpt.latest_checkpoint(self.paths.checkpoints, log=self.log)
        if state is None and init_checkpoint is not None:
            state = ckpt.read_checkpoint(init_checkpoint)
            self._load_weights(state, init_checkpoint)
            self.log(f"Initialised weights from {init_checkpoint} (fine-tuning from step 0)")
            return
        if state is None:
            self.log(f"No checkpoint in {self.paths.checkpoints}: starting from scratch")
            return
        self._load_weights(state, path)
        if ckpt.is_original_format(state):
            self.step = int(state["global_step"]) + 1
            self.log(f"Resumed from the original-format checkpoint {path} at step {self.step} "
                     "(its optimizer state is not loaded: moments restart at zero)")
            return
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.step = int(state["step"])
        self.skips = int(state.get("skips", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))
        self.log(f"Resumed from {path} at step {self.step}")

    def _load_weights(self, state, source):
        ema_state = state.get("ema_model_state_dict") or state["model_state_dict"]
        ckpt.load_model_state(self.model, state["model_state_dict"], source)
        ckpt.load_model_state(self.model, ema_state, source)  # validates shapes of the EMA weights too
        self.ema.load_state_dict(self.model, ema_state)
        main = ema_state if self.config.train.resume_from_ema else state["model_state_dict"]
        self.model.load_state_dict(main)
        if self.config.train.resume_from_ema:
            self.log("Resuming from the EMA weights (train.resume_from_ema)")

    def checkpoint_payload(self):
        return {"step": self.step, "skips": self.skips, "consecutive_skips": self.consecutive_skips,
                "global_step": self.step - 1,
                "model_state_dict": self.model.state_dict(), "ema_model_state_dict": self.ema.state_dict(self.model),
                "optimizer_state_dict": self.optimizer.state_dict(), "config": self.config.to_dict()}

    def save(self):
        """Write checkpoint_<step>.pt (rank 0); a failed write retries or stops per [run] checkpoint_write_failure."""
        if self.dist.is_main:
            run = self.config.run
            path = ckpt.write_checkpoint(self.paths.checkpoints, self.step, self.checkpoint_payload(),
                                         keep=run.max_allowed_checkpoints, on_failure=run.checkpoint_write_failure,
                                         retries=run.checkpoint_write_retries, log=self.log)
            self.log(f"Saved checkpoint {path}")

    # ------------------------------------------------------------------------------------ steps
    def train_step(self, images):
        """One iteration on this rank's batch; returns metrics (global over ranks) and the logits."""
        cfg, step = self.config, self.step
        lr = learning_rate(step, cfg.optimizer)
        set_learning_rate(self.optimizer, lr)
        noise = latent_noise(self.arch, cfg.train.batch_size, self.dist.rank, self.dist.world_size,
                             cfg.run.seed, step, self.device)
        self.model.train()
        with self._autocast():
            logits, posteriors, priors = self.forward_model(images, None, noise)
        objective = vae_objective(logits.float(), images, posteriors, priors, cfg, step=step,
                                  batch_size=images.shape[0], gamma_stats_reduce=all_reduce_sum)
        self.optimizer.zero_grad(set_to_none=True)
        objective.loss.backward()
        norm = gradient_norm(self.params)
        norm_value = float(norm)
        skipped = should_skip(norm_value, cfg.optimizer)
        if not skipped:
            if cfg.optimizer.clip_gradient_norm:
                clip_gradients(self.params, cfg.optimizer.gradient_clip_norm_value, norm)
            apply_weight_decay(self.decayed, lr, cfg.loss.l2_weight)
            self.optimizer.step()
            self.ema.update(self.model)
            self.consecutive_skips = 0
        else:
            self.skips += 1
            self.consecutive_skips += 1
        self.step += 1
        metrics = self._step_metrics(objective, norm_value, lr, skipped)
        limit = cfg.train.max_consecutive_skips
        if limit and self.consecutive_skips >= limit:
            if math.isfinite(norm_value):
                advice = ("lower [optimizer] learning_rate, raise gradient_skip_threshold or enable "
                          "clip_gradient_norm (--set ... on the same command), then run it again to resume")
            else:
                advice = ("the loss or the gradients are NaN/inf, so the weights have probably diverged: lower "
                          "[optimizer] learning_rate or enable clip_gradient_norm, and resume from a checkpoint "
                          "written before the divergence (delete the newer ones)")
            raise TooManySkipsError(
                f"stopped at step {self.step}: the last {limit} updates were all skipped (gradient norm "
                f"{norm_value:.4g}, skip threshold {cfg.optimizer.gradient_skip_threshold}, "
                f"[train] max_consecutive_skips = {limit}); {ckpt.newest_intact(self.paths.checkpoints)}; {advice}")
        return metrics, logits

    def _autocast(self):
        enabled = self.config.train.mixed_precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _step_metrics(self, obj, norm, lr, skipped):
        """Train metrics of this step averaged over ranks, in reported units."""
        local = torch.cat([torch.stack([obj.recon_nats_per_dim, obj.kl_nats_per_dim]).double(),
                           obj.kl_per_layer_bits_per_latent.double()])
        local = all_reduce_sum(local) / self.dist.world_size
        e = effective_pixels(self.config.data)
        scale = e if is_binarized(self.config.data) else 1.0 / LN2
        recon, kl = float(local[0]) * scale, float(local[1]) * scale
        layers = local[2:]
        return {"Losses/reconstruction_loss": recon, "Losses/kl_div": kl, "Losses/nelbo": recon + kl,
                "Losses/average_kl_div": float(layers.sum()), "Losses/variational_beta": obj.beta,
                "Losses/skips_count": self.skips / max(self.config.train.total_train_steps, 1),
                "Schedules/learning_rate": lr, "Mean_Max_Updates/Global_norm": norm,
                "active_groups": int((layers >= self.config.metrics.latent_active_threshold).sum()),
                "skipped": float(skipped), "_kl_layers": layers.tolist()}

    # ------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, loader):
        """Validation metrics over the fixed validation subset, averaged over all ranks (raw weights)."""
        self.model.eval()
        acc = MetricAccumulator(binarized=is_binarized(self.config.data),
                                effective_pixels=effective_pixels(self.config.data),
                                n_layers=self.arch.n_latent_layers)
        gen = torch.Generator(device=self.device).manual_seed(step_seed(self.config.run.seed, self.step, salt=1))
        first = None
        for images in loader:
            images = images.to(self.device, non_blocking=True)
            result = evaluate_batch(self.model, images, self.config, step=self.step, generator=gen)
            acc.add(result)
            if first is None:
                first = (images[:N_IMAGES], result)
        self.model.train()
        return acc.result(self.config.metrics.latent_active_threshold), first

    @torch.no_grad()
    def prior_samples(self, n=N_IMAGES):
        """Images sampled from the EMA model's prior at temperature 1."""
        gen = torch.Generator(device=self.device).manual_seed(step_seed(self.config.run.seed, self.step, salt=2))
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.ema.state_dict(self.model))
        self.model.eval()
        logits, _ = self.model.sample(n, [1.0] * self.arch.n_latent_layers)
        self.model.load_state_dict(state)
        self.model.train()
        return output_samples(logits.float(), self.config, generator=gen)


def log_evaluation(logger, trainer, split, metrics, first, train_metrics=None):
    """Write the original's TensorBoard tags (and JSON lines) for one evaluation."""
    step, cfg = trainer.step, trainer.config
    scalars = {"Losses/reconstruction_loss": metrics["reconstruction_loss"], "Losses/kl_div": metrics["kl_div"],
               "Losses/nelbo": metrics["nelbo"], "Losses/ssim": metrics["ssim"],
               "Losses/average_kl_div": float(sum(metrics["kl_per_layer_bits"]))}
    scalars.update({f"Losses/latent_kl_{i}": v for i, v in enumerate(metrics["kl_per_layer_bits"])})
    logger.scalars(split, step, scalars)
    images, result = first
    logger.histogram(split, step, "Distributions/target", images.float().cpu().numpy(), 20)
    logger.histogram(split, step, "Distributions/output", result.samples.float().clamp(-1, 1).cpu().numpy(), 20)
    if not is_binarized(cfg.data):
        _, means, log_scales, _ = split_mol_logits(result.logits.float(), cfg.model.num_output_mixtures)
        logger.histogram(split, step, "OutputLayer/means", means.cpu().numpy(), 30)
        logger.histogram(split, step, "OutputLayer/log_scales", log_scales.cpu().numpy(), 30)
    targets = images_to_uint8(images, cfg)
    recons = images_to_uint8(result.samples[:N_IMAGES], cfg)
    logger.image(split, step, "Images/Original", make_grid(targets))
    logger.image(split, step, "Images/Generated", make_grid(recons))
    return targets, recons


def _silent(*args, **kwargs):
    """The log function of ranks other than 0."""


def run_training(config, paths, dist, log=print, init_checkpoint=None, progress=True):
    """Train until train.total_train_steps, evaluating and checkpointing every checkpoint interval.

    A full or failing disk (ENOSPC, EDQUOT, EIO, EROFS, EFBIG) ends the run with a UserError naming the
    file; the checkpoints already written are intact.
    """
    try:
        return _run_training(config, paths, dist, log, init_checkpoint, progress)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        raise UserError(f"{where}{ckpt.os_error_reason(exc)}, a disk problem; "
                        f"{ckpt.newest_intact(paths.checkpoints)}; fix it and run the same command again to resume"
                        ) from None


def _run_training(config, paths, dist, log, init_checkpoint, progress):
    if not dist.is_main:
        log = _silent
    trainer = Trainer(config, paths, dist, log=log, init_checkpoint=init_checkpoint)
    cfg = config
    total, interval = cfg.train.total_train_steps, cfg.train.checkpoint_and_eval_interval_in_steps
    logger = RunLogger(paths, enabled=dist.is_main)
    val_loader = make_eval_loader(cfg, "val", rank=dist.rank, world_size=dist.world_size,
                                  batch_size=max(cfg.val.batch_size // dist.world_size, 1),
                                  n_samples=cfg.val.n_samples_for_validation)
    if trainer.step >= total:
        log(f"Run '{cfg.run.name}' already finished ({trainer.step} of {total} steps); nothing to do")
        logger.close()
        return trainer
    train_stream = make_train_loader(cfg, rank=dist.rank, world_size=dist.world_size, start_step=trainer.step)
    bar = tqdm(total=total, initial=trainer.step, disable=not (progress and dist.is_main), dynamic_ncols=True,
               desc=cfg.run.name, unit="step")
    unit = "nats" if is_binarized(cfg.data) else "bpd"
    t_last = time.perf_counter()
    try:
        for images in train_stream:
            images = images.to(trainer.device, non_blocking=True)
            if cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            metrics, _ = trainer.train_step(images)
            now = time.perf_counter()
            sec, t_last = now - t_last, now
            bar.update(1)
            bar.set_postfix_str(f"{sec:.2f}s/step nelbo {metrics['Losses/nelbo']:.3f} {unit} kl "
                                f"{metrics['Losses/kl_div']:.3f} gnorm {metrics['Mean_Max_Updates/Global_norm']:.1f} "
                                f"skips {trainer.skips}", refresh=False)
            if trainer.step % cfg.train.logging_interval_in_steps == 0 or trainer.step == total:
                logger.scalars("train", trainer.step, {k: v for k, v in metrics.items() if not k.startswith("_")}
                               | {"Time/step_seconds": sec})
            if trainer.step % interval == 0 or trainer.step == total:
                _evaluate_and_save(trainer, logger, val_loader, metrics, log)
            if trainer.step >= total:
                break
    finally:
        bar.close()
        logger.close()
    log(f"Finished training after {trainer.step} steps. Logs: {paths.logs}  Checkpoints: {paths.checkpoints}")
    return trainer


def _evaluate_and_save(trainer, logger, val_loader, train_metrics, log):
    metrics, first = trainer.evaluate(val_loader)
    unit = "nats/image" if is_binarized(trainer.config.data) else "bits/dim"
    log(f"\nValidation step {trainer.step} | reconstruction {metrics['reconstruction_loss']:.4f} | KL "
        f"{metrics['kl_div']:.4f} | NELBO {metrics['nelbo']:.6f} {unit} | SSIM {metrics['ssim']:.4f} | active groups "
        f"{metrics['active_groups']}/{trainer.arch.n_latent_layers}")
    samples = trainer.prior_samples()
    if trainer.dist.is_main:
        targets, recons = log_evaluation(logger, trainer, "val", metrics, first)
        prior = images_to_uint8(samples, trainer.config)
        logger.image("val", trainer.step, "Images/Prior_samples", make_grid(prior))
        rows = [targets[:N_IMAGES], recons[:N_IMAGES], prior[:N_IMAGES]]
        n = min(len(r) for r in rows)
        grid = make_grid(np.concatenate([r[:n] for r in rows]), ncols=n)
        path = save_png(trainer.paths.logs / "samples" / f"step_{trainer.step}.png", grid)
        log(f"Samples (rows: targets, reconstructions, prior samples): {path}")
        logger.flush()
    trainer.save()

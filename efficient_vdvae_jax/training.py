"""The JAX training loop: one jitted data-parallel step over a device mesh, exact resume, evaluation, logging.

The recipe and the step counter are those of the PyTorch side (efficient_vdvae_torch/training.py):
`step` = the number of completed training iterations. Iteration `step` uses the learning rate, KL beta
and gamma of `step` (evaluated on the host by `efficient_vdvae_core.schedules` and passed to the
jitted step as traced scalars, so nothing retraces), its data batch is a function of (seed, step)
(`efficient_vdvae_core.data.stream`), its latent noise is drawn from fold_in(key(seed), step) over the
global batch (so 1 and N devices draw the same eps), and a checkpoint written after it is
`checkpoint_<step + 1>`. A skipped update (non-finite norm or norm >= threshold) leaves parameters,
optimizer state and EMA unchanged; the step counter still advances.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import is_binarized
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.images import make_grid, save_png
from efficient_vdvae_core.schedules import gamma_active, kl_beta, learning_rate
from efficient_vdvae_core.tensorboard import RunLogger
from efficient_vdvae_jax.data.loaders import EvalBatches, TrainStream
from efficient_vdvae_jax.evaluation import (SALT_EVAL_POSTERIOR, SALT_PRIOR_SAMPLES, MetricAccumulator,
                                            evaluate_batch_fn, images_to_uint8, latent_noise, prior_sample_fn,
                                            seed_key)
from efficient_vdvae_jax.model.autoencoder import build_model
from efficient_vdvae_jax.model.losses import LN2, effective_pixels, split_mol_logits, vae_objective
from efficient_vdvae_jax.utils import distributed as D
from efficient_vdvae_jax.utils.checkpoint import CheckpointStore, abstract_like
from efficient_vdvae_jax.utils.optim import (apply_update, build_direction, clip_by_norm, decay_mask, ema_update,
                                             global_norm, select, should_skip)
from efficient_vdvae_jax.utils.state import init_state, merge_model, split_model
from efficient_vdvae_jax.utils.weights import load_weights_file

N_IMAGES = 8  # images per grid in TensorBoard and the samples PNG


class TooManySkipsError(UserError):
    """Training stopped because too many consecutive updates were skipped."""


def schedule_values(step, config):
    """The host-side values of iteration `step` as NumPy scalars: 'lr', 'beta', 'gamma_on' from the shared
    schedules, and 'clip_norm' (the clipping threshold; inf when clipping is off, which leaves the
    gradients exactly as they are)."""
    opt = config.optimizer
    return {"lr": np.float32(learning_rate(step, opt)), "beta": np.float32(kl_beta(step, config.loss)),
            "gamma_on": np.bool_(gamma_active(step, config.loss)),
            "clip_norm": np.float32(opt.gradient_clip_norm_value if opt.clip_gradient_norm else np.inf)}


def make_train_step(graphdef, rest, config, arch, tx, mask):
    """fn(state, images, hyper, noise=None) -> (state, metrics): one training iteration on the global batch.

    `hyper` = schedule_values(step); `noise` (posterior eps per latent layer, (B, H, W, V)) defaults to
    `latent_noise(fold_in(key(run.seed), state['step']))`.
    """
    opt, loss_cfg = config.optimizer, config.loss
    decay = config.train.ema_decay

    def step_fn(state, images, hyper, noise=None):
        if noise is None:
            key = jax.random.fold_in(jax.random.key(config.run.seed), state["step"])
            noise = latent_noise(key, arch, images.shape[0])

        def loss_fn(params):
            model = merge_model(graphdef, params, rest)
            logits, posteriors, priors = model(images, noise=noise)
            obj = vae_objective(logits, images, posteriors, priors, config, beta=hyper["beta"],
                                gamma_on=hyper["gamma_on"], batch_size=images.shape[0])
            return obj.loss, {"recon": obj.recon_nats_per_dim, "kl": obj.kl_nats_per_dim,
                              "kl_layers": obj.kl_per_layer_bits_per_latent}

        (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        norm = global_norm(grads)
        skipped = should_skip(norm, opt)
        grads = clip_by_norm(grads, hyper["clip_norm"], norm)
        direction, opt_state = tx.update(grads, state["opt_state"], state["params"])
        l2 = loss_cfg.l2_weight if loss_cfg.use_weight_decay else 0.0
        params = apply_update(state["params"], direction, hyper["lr"], mask, l2)
        updated = {"params": params, "opt_state": opt_state, "ema": ema_update(state["ema"], params, decay)}
        kept = {k: state[k] for k in updated}
        new_state = dict(select(skipped, kept, updated), step=state["step"] + 1,
                         skips=state["skips"] + skipped.astype(jnp.int32),
                         consecutive_skips=jnp.where(skipped, state["consecutive_skips"] + 1, 0))
        metrics = dict(parts, norm=norm, skipped=skipped, skips=new_state["skips"],
                       consecutive_skips=new_state["consecutive_skips"], **hyper)
        return new_state, metrics

    return step_fn


class Trainer:
    """Owns the model structure, the replicated TrainState on the mesh, and the jitted functions of one run."""

    def __init__(self, config, paths, mesh=None, log=print, init_checkpoint=None):
        self.config, self.paths, self.log = config, paths, log
        self.mesh = D.make_mesh() if mesh is None else mesh
        if config.train.batch_size % D.n_devices(self.mesh):
            raise UserError(f"[train] batch_size = {config.train.batch_size} is not divisible by the "
                            f"{D.n_devices(self.mesh)} devices; choose a multiple of {D.n_devices(self.mesh)}")
        self.arch = build_architecture(config.model, config.data)
        self.graphdef, params, self.rest = split_model(build_model(config))
        self.tx = build_direction(config.optimizer)
        self.state = D.put_replicated(self.mesh, init_state(params, self.tx))
        self.store = CheckpointStore(paths.checkpoints, keep=config.run.max_allowed_checkpoints)
        self.step = 0
        self._resume(init_checkpoint)
        step_fn = make_train_step(self.graphdef, self.rest, config, self.arch, self.tx, decay_mask(params))
        self._step = jax.jit(step_fn, donate_argnums=0, out_shardings=D.replicated(self.mesh))
        self._evaluate = evaluate_batch_fn(self.graphdef, self.rest, config, self.arch)
        self._prior = prior_sample_fn(self.graphdef, self.rest, config, self.arch, N_IMAGES, self.mesh)

    # ----------------------------------------------------------------------------------- resume
    def _resume(self, init_checkpoint):
        found = self.store.restore_latest(abstract_like(self.state), log=self.log)
        if found is None and init_checkpoint is not None:
            weights = load_weights_file(init_checkpoint, self.config, log=self.log)
            self._set_weights(weights.params, weights.ema)
            self.log(f"Initialised weights from {init_checkpoint} (fine-tuning from step 0)")
            return
        if found is None:
            self.log(f"No checkpoint in {self.paths.checkpoints}: starting from scratch")
            return
        step, state, meta = found
        self.state, self.step = state, int(meta["step"])
        if self.config.train.resume_from_ema:
            self._set_weights(state["ema"], state["ema"])
            self.log("Resuming from the EMA weights (train.resume_from_ema)")
        self.log(f"Resumed from {self.store.path(step)} at step {self.step}")

    def _set_weights(self, params, ema):
        put = (lambda tree: D.put_replicated(self.mesh, jax.tree.map(jnp.asarray, tree)))
        self.state = dict(self.state, params=put(params), ema=put(ema))

    def checkpoint_meta(self, metrics=None):
        skips = int(D.to_host(self.state["skips"]))
        return {"step": self.step, "skips": skips, "consecutive_skips": int(D.to_host(self.state["consecutive_skips"])),
                "framework": "jax", "config": self.config.to_dict()}

    def save(self):
        path = self.store.save(self.step, self.state, self.checkpoint_meta())
        self.log(f"Saved checkpoint {path}")
        return path

    # ------------------------------------------------------------------------------------ steps
    def train_step(self, images, noise=None):
        """One iteration on the global batch (this process's rows, NHWC); returns host metrics in reported units."""
        cfg = self.config
        hyper = schedule_values(self.step, cfg)
        batch = D.global_batch(self.mesh, np.asarray(images, np.float32))
        self.state, out = self._step(self.state, batch, hyper, noise)
        out = {k: D.to_host(v) for k, v in out.items()}
        self.step += 1
        metrics = self._step_metrics(out)
        limit = cfg.train.max_consecutive_skips
        if limit and int(out["consecutive_skips"]) >= limit:
            raise TooManySkipsError(
                f"stopped at step {self.step}: the last {limit} updates were all skipped (gradient norm "
                f"{float(out['norm']):.4g}, skip threshold {cfg.optimizer.gradient_skip_threshold}); lower the learning "
                "rate, raise [optimizer] gradient_skip_threshold or enable clip_gradient_norm, then resume")
        return metrics

    def _step_metrics(self, out):
        e = effective_pixels(self.config.data)
        scale = e if is_binarized(self.config.data) else 1.0 / LN2
        recon, kl = float(out["recon"]) * scale, float(out["kl"]) * scale
        layers = np.asarray(out["kl_layers"], np.float64)
        return {"Losses/reconstruction_loss": recon, "Losses/kl_div": kl, "Losses/nelbo": recon + kl,
                "Losses/average_kl_div": float(layers.sum()), "Losses/variational_beta": float(out["beta"]),
                "Losses/skips_count": int(out["skips"]) / max(self.config.train.total_train_steps, 1),
                "Schedules/learning_rate": float(out["lr"]), "Mean_Max_Updates/Global_norm": float(out["norm"]),
                "active_groups": int((layers >= self.config.metrics.latent_active_threshold).sum()),
                "skipped": float(out["skipped"]), "skips": int(out["skips"]), "gamma_on": bool(out["gamma_on"]),
                "_kl_layers": layers.tolist()}

    # ------------------------------------------------------------------------------- evaluation
    def evaluate(self, batches):
        """Validation metrics over the fixed validation subset (raw weights, all devices); (metrics, first batch)."""
        acc = MetricAccumulator(binarized=is_binarized(self.config.data),
                                effective_pixels=effective_pixels(self.config.data),
                                n_layers=self.arch.n_latent_layers)
        key = seed_key(self.config.run.seed, self.step, SALT_EVAL_POSTERIOR)
        first = None
        for index, batch in enumerate(batches):
            images = D.global_batch(self.mesh, batch.images)
            result = self._evaluate(self.state["params"], images, jax.random.fold_in(key, index))
            acc.add(result, batch.n_valid)
            if first is None:
                n = min(N_IMAGES, batch.n_valid)
                first = {"images": D.to_host(images)[:n], "samples": D.to_host(result["samples"])[:n],
                         "logits": D.to_host(result["logits"])[:n]}
        return acc.result(self.config.metrics.latent_active_threshold), first

    def prior_samples(self):
        """Images sampled from the EMA model's prior at temperature 1."""
        temperatures = np.ones(self.arch.n_latent_layers, np.float32)
        key = seed_key(self.config.run.seed, self.step, SALT_PRIOR_SAMPLES)
        return D.to_host(self._prior(self.state["ema"], temperatures, key)[0])

    def close(self):
        self.store.wait()
        self.store.close()


def log_evaluation(logger, trainer, split, metrics, first):
    """Write the original's TensorBoard tags (and JSON lines) for one evaluation; returns uint8 targets, recons."""
    step, cfg = trainer.step, trainer.config
    scalars = {"Losses/reconstruction_loss": metrics["reconstruction_loss"], "Losses/kl_div": metrics["kl_div"],
               "Losses/nelbo": metrics["nelbo"], "Losses/ssim": metrics["ssim"],
               "Losses/average_kl_div": float(sum(metrics["kl_per_layer_bits"]))}
    scalars.update({f"Losses/latent_kl_{i}": v for i, v in enumerate(metrics["kl_per_layer_bits"])})
    logger.scalars(split, step, scalars)
    logger.histogram(split, step, "Distributions/target", first["images"], 20)
    logger.histogram(split, step, "Distributions/output", np.clip(first["samples"], -1, 1), 20)
    if not is_binarized(cfg.data):
        _, means, log_scales, _ = split_mol_logits(jnp.asarray(first["logits"]), cfg.model.num_output_mixtures)
        logger.histogram(split, step, "OutputLayer/means", np.asarray(means), 30)
        logger.histogram(split, step, "OutputLayer/log_scales", np.asarray(log_scales), 30)
    targets = images_to_uint8(first["images"], cfg)
    recons = images_to_uint8(first["samples"], cfg)
    logger.image(split, step, "Images/Original", make_grid(targets))
    logger.image(split, step, "Images/Generated", make_grid(recons))
    return targets, recons


def _silent(*args, **kwargs):
    """The log function of processes other than 0."""


def run_training(config, paths, mesh=None, log=print, init_checkpoint=None, progress=True):
    """Train until train.total_train_steps, evaluating and checkpointing every checkpoint interval."""
    main = D.is_main()
    if not main:
        log = _silent
    trainer = Trainer(config, paths, mesh=mesh, log=log, init_checkpoint=init_checkpoint)
    cfg = config
    total = cfg.train.total_train_steps
    logger = RunLogger(paths, enabled=main)
    val_batches = EvalBatches(cfg, "val", batch_size=cfg.val.batch_size, multiple=D.n_devices(trainer.mesh),
                              n_samples=cfg.val.n_samples_for_validation)
    try:
        if trainer.step >= total:
            log(f"Run '{cfg.run.name}' already finished ({trainer.step} of {total} steps); nothing to do")
            return trainer
        _train_loop(trainer, logger, val_batches, log, progress and main)
    finally:
        logger.close()
        trainer.close()
    log(f"Finished training after {trainer.step} steps. Logs: {paths.logs}  Checkpoints: {paths.checkpoints}")
    return trainer


def _train_loop(trainer, logger, val_batches, log, progress):
    cfg = trainer.config
    total, interval = cfg.train.total_train_steps, cfg.train.checkpoint_and_eval_interval_in_steps
    unit = "nats" if is_binarized(cfg.data) else "bpd"
    stream = TrainStream(cfg, start_step=trainer.step)
    bar = tqdm(total=total, initial=trainer.step, disable=not progress, dynamic_ncols=True, desc=cfg.run.name,
               unit="step")
    t_last = time.perf_counter()
    try:
        for images in stream:
            metrics = trainer.train_step(images)
            now = time.perf_counter()
            sec, t_last = now - t_last, now
            bar.update(1)
            bar.set_postfix_str(f"{sec:.2f}s/step nelbo {metrics['Losses/nelbo']:.3f} {unit} kl "
                                f"{metrics['Losses/kl_div']:.3f} gnorm {metrics['Mean_Max_Updates/Global_norm']:.1f} "
                                f"skips {metrics['skips']}", refresh=False)
            if trainer.step % cfg.train.logging_interval_in_steps == 0 or trainer.step == total:
                logger.scalars("train", trainer.step, {k: v for k, v in metrics.items()
                                                       if not k.startswith("_") and k not in ("skips", "gamma_on")}
                               | {"Time/step_seconds": sec})
            if trainer.step % interval == 0 or trainer.step == total:
                _evaluate_and_save(trainer, logger, val_batches, log)
                t_last = time.perf_counter()
            if trainer.step >= total:
                break
    finally:
        bar.close()


def _evaluate_and_save(trainer, logger, val_batches, log):
    metrics, first = trainer.evaluate(val_batches)
    unit = "nats/image" if is_binarized(trainer.config.data) else "bits/dim"
    log(f"\nValidation step {trainer.step} | reconstruction {metrics['reconstruction_loss']:.4f} | KL "
        f"{metrics['kl_div']:.4f} | NELBO {metrics['nelbo']:.6f} {unit} | SSIM {metrics['ssim']:.4f} | active groups "
        f"{metrics['active_groups']}/{trainer.arch.n_latent_layers}")
    samples = trainer.prior_samples()
    if D.is_main():
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

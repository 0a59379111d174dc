"""The PyTorch training backend: model, EMA and optimizer on one device, data-parallel over torchrun processes.

It answers how (tensors, devices, DDP, autocast); `efficient_vdvae_core.training.loop` decides when and
whether. A training step on this process's rows of the global batch: latent noise drawn for the global
batch from (seed, TRAIN_LATENTS, step) and sliced like the data (rank r takes rows r, r + W, ...), the
loss normalised by this process's rows, DDP averaging the gradients, then the core's clip and skip rules,
decoupled weight decay, the optimizer step and the EMA update. A skipped update changes neither weights,
optimizer moments nor EMA.
"""
import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from efficient_vdvae_core.architecture import build_architecture, unused_parameter_prefixes
from efficient_vdvae_core.randomness import EVALUATION, PRIOR_SAMPLES, TRAIN_LATENTS, derived_seed
from efficient_vdvae_core.schedules import is_skipped
from efficient_vdvae_core.training.backend import StepOutput
from efficient_vdvae_core.original_checkpoints import check_original_resumable
from efficient_vdvae_core.weights import check_fits
from efficient_vdvae_torch.data.loaders import make_train_loader, plan_loader
from efficient_vdvae_torch.evaluation import (evaluate_batch, image_noise, nhwc, output_means, output_noise,
                                              output_samples)
from efficient_vdvae_torch.model.autoencoder import Autoencoder
from efficient_vdvae_torch.model.losses import vae_objective
from efficient_vdvae_torch.utils import distributed
from efficient_vdvae_torch.utils.checkpoint import TorchCodec
from efficient_vdvae_torch.utils.original import adamax_state_dict, model_state_dicts
from efficient_vdvae_torch.utils.optim import (EMA, apply_weight_decay, build_optimizer, clip_gradients,
                                               decayed_parameters, gradient_norm, set_learning_rate)


def build_training_model(config, device):
    """The model, seeded by run.seed, on `device` (channels-last when configured)."""
    torch.manual_seed(config.run.seed)
    model = Autoencoder(build_architecture(config.model, config.data), config.model).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def train_noise(arch, global_batch, rank, world_size, seed, step, device):
    """Posterior eps of this rank's rows of a step's global batch (drawn for the whole batch, then sliced)."""
    g = torch.Generator(device=device).manual_seed(derived_seed(seed, TRAIN_LATENTS, step))
    return [torch.randn((global_batch, b.latent_variates, b.resolution, b.resolution), generator=g,
                        device=device)[rank::world_size] for b in arch.latent_layers]


def data_parallel(module, arch, device):
    """DDP around `module`, with the parameters that never get a gradient (known from `arch`) left out of the
    gradient reduction: they stay in the state_dict, and DDP need not search the graph for them every step."""
    prefixes = unused_parameter_prefixes(arch)
    ignored = [name for name, _ in module.named_parameters()
               if name.removeprefix("_orig_mod.").startswith(tuple(prefixes))]  # torch.compile's wrapper prefix
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


class TorchTrainer:
    """Owns the model, EMA and optimizer of one training run (the core's TrainBackend)."""

    def __init__(self, config, dist, log=print):
        self.config, self.dist, self.log = config, dist, log
        self.device = dist.device
        self.codec = TorchCodec()
        self.arch = build_architecture(config.model, config.data)
        self.model = build_training_model(config, self.device)
        self.ema = EMA(self.model, config.train.ema_decay)
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.decayed = decayed_parameters(self.model) if config.loss.use_weight_decay else []
        self.forward_model = self.model
        if config.train.activation_checkpointing:
            self.model.bottom_up.checkpoint_blocks = self.model.top_down.checkpoint_blocks = True
        if config.train.compile:
            self.forward_model = torch.compile(self.model)
        if dist.n_processes > 1:
            self.forward_model = data_parallel(self.forward_model, self.arch, self.device)
        self._eval_loaders = {}

    # ---------------------------------------------------------------------------- checkpoints
    def state(self):
        return {"model_state_dict": self.model.state_dict(), "ema_model_state_dict": self.ema.state_dict(self.model),
                "optimizer_state_dict": self.optimizer.state_dict()}

    def load_state(self, checkpoint, resume_from_ema):
        state = checkpoint.state
        if "original" in state:  # the original code's file (either framework): weights, EMA and Adamax moments
            original = state["original"]
            check_original_resumable(original, self._own_shapes(), self.config.optimizer)
            raw, ema = model_state_dicts(original)
            self._set_weights(raw, ema, resume_from_ema)
            self.optimizer.load_state_dict(adamax_state_dict(self.optimizer, self.model, original))
            return
        self._set_weights(state["model_state_dict"], state.get("ema_model_state_dict"), resume_from_ema)
        self.optimizer.load_state_dict(state["optimizer_state_dict"])

    def _own_shapes(self):
        return {k: tuple(v.shape) for k, v in self.model.state_dict().items()}

    def load_weights(self, weights):
        check_fits(weights, self._own_shapes())
        as_tensors = (lambda tree: None if tree is None else {k: torch.from_numpy(np.array(v)) for k, v in tree.items()})
        self._set_weights(as_tensors(weights.params), as_tensors(weights.ema), False)

    def _set_weights(self, raw, ema, resume_from_ema):
        ema = raw if ema is None else ema
        self.model.load_state_dict(ema, strict=True)  # validates the EMA weights' names and shapes too
        self.ema.load_state_dict(self.model, ema)
        self.model.load_state_dict(ema if resume_from_ema else raw, strict=True)

    # ----------------------------------------------------------------------------------- steps
    def train_batches(self, dataset, start_step):
        stream = make_train_loader(self.config, rank=self.dist.process_index, world_size=self.dist.n_processes,
                                   start_step=start_step, images=dataset)
        for images in stream:
            images = images.to(self.device, non_blocking=True)
            if self.config.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images

    def train_step(self, images, values):
        cfg = self.config
        set_learning_rate(self.optimizer, values.learning_rate)
        noise = train_noise(self.arch, cfg.train.batch_size, self.dist.process_index, self.dist.n_processes,
                            cfg.run.seed, values.step, self.device)
        self.model.train()
        with self._autocast():
            logits, posteriors, priors = self.forward_model(images, None, noise)
        objective = vae_objective(logits.float(), images, posteriors, priors, cfg, beta=values.kl_beta,
                                  gamma_on=values.gamma_on, batch_size=images.shape[0],
                                  gamma_stats_reduce=distributed.all_reduce_sum)
        self.optimizer.zero_grad(set_to_none=True)
        objective.loss.backward()
        norm = gradient_norm(self.params)
        norm_value = float(norm)
        skipped = is_skipped(norm_value, values.skip_threshold)
        if not skipped:
            if values.clip_norm < float("inf"):
                clip_gradients(self.params, values.clip_norm, norm)
            apply_weight_decay(self.decayed, values.learning_rate, cfg.loss.l2_weight)
            self.optimizer.step()
            self.ema.update(self.model)
        local = torch.cat([torch.stack([objective.recon_nats_per_dim, objective.kl_nats_per_dim]).double(),
                           objective.kl_per_layer_bits_per_latent.double()])
        local = distributed.all_reduce_sum(local) / self.dist.n_processes
        return StepOutput(recon_nats_per_dim=float(local[0]), kl_nats_per_dim=float(local[1]),
                          kl_per_layer_bits=local[2:].cpu().numpy(), grad_norm=norm_value, skipped=skipped)

    def _autocast(self):
        enabled = self.config.train.mixed_precision == "bf16"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # ------------------------------------------------------------------------------ evaluation
    def eval_batches(self, dataset, plan):
        key = (id(dataset), id(plan))
        if key not in self._eval_loaders:
            self._eval_loaders = {key: plan_loader(self.config, dataset, plan)}
        for images in self._eval_loaders[key]:
            yield images.to(self.device, non_blocking=True)

    @torch.no_grad()
    def evaluate(self, images, rows, counter, details, purpose=EVALUATION):
        self.model.eval()
        try:
            return evaluate_batch(self.model, images, self.config, self.arch, purpose=purpose, counter=counter,
                                  indices=rows.images, details=details)
        finally:
            self.model.train()

    def parameters_and_gradients(self):
        """{state_dict name: (weights, gradients of the last step or None)} as NumPy arrays."""
        return {name: (p.detach().float().cpu().numpy(), None if p.grad is None else p.grad.float().cpu().numpy())
                for name, p in self.model.named_parameters()}

    @torch.no_grad()
    def prior_samples(self, n, counter, ema=True):
        indices = range(n)
        raw = {k: v.clone() for k, v in self.model.state_dict().items()} if ema else None
        if ema:
            self.model.load_state_dict(self.ema.state_dict(self.model))
        self.model.eval()
        try:
            noise = image_noise(self.config, self.arch, PRIOR_SAMPLES, counter, indices, self.device)
            logits, _ = self.model.sample(n, [1.0] * self.arch.n_latent_layers, noise=noise)
            logits = logits.float()
            out = output_noise(self.config, PRIOR_SAMPLES, counter, indices, self.device)
            return nhwc(output_samples(logits, self.config, noise=out)), output_means(logits, self.config)
        finally:
            if ema:
                self.model.load_state_dict(raw)
            self.model.train()

    # ----------------------------------------------------------------------------- processes
    def all_reduce_sum(self, array):
        tensor = torch.as_tensor(np.asarray(array, np.float64), device=self.device)
        return distributed.all_reduce_sum(tensor).cpu().numpy()

    def barrier(self):
        distributed.barrier()

    def is_lost_process(self, exc):
        return distributed.is_lost_process(exc)

    def close(self):
        self._eval_loaders = {}

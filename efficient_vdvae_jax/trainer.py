"""The JAX training backend: one jitted data-parallel step over a device mesh (every device of every process).

It answers how (arrays, meshes, compilation); `efficient_vdvae_core.training.loop` decides when and whether.
The step's schedule values arrive as traced scalars (`StepValues`), so nothing retraces; its latent noise
is drawn from key(seed) folded with (TRAIN_LATENTS, step) over the global batch, so 1 and N devices draw
the same eps. A skipped update (the core's rule: not grad_norm < skip_threshold) leaves parameters,
optimizer state and EMA unchanged. The jitted programs of a config are kept for the process
(`programs`): a second run of the same model in one process traces and compiles nothing again.
"""
from collections import OrderedDict
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.randomness import EVALUATION, PRIOR_SAMPLES, TRAIN_LATENTS
from efficient_vdvae_core.training.backend import StepOutput
from efficient_vdvae_core.original_checkpoints import check_original_resumable
from efficient_vdvae_core.weights import check_fits
from efficient_vdvae_core.params import jax_params_to_torch_state_dict, torch_state_dict_to_jax
from efficient_vdvae_jax.data.loaders import TrainStream, plan_batches
from efficient_vdvae_jax.evaluation import evaluate_batch_fn, eval_output, output_means, prior_sample_fn, seed_key
from efficient_vdvae_jax.model.autoencoder import build_model
from efficient_vdvae_jax.model.layers import compute_dtype
from efficient_vdvae_jax.model.losses import vae_objective
from efficient_vdvae_jax.utils import distributed as D
from efficient_vdvae_jax.utils.checkpoint import OrbaxCodec, abstract_like
from efficient_vdvae_jax.utils.original import adamax_state, param_trees
from efficient_vdvae_jax.utils.optim import (apply_update, build_direction, clip_by_norm, decay_mask, ema_update,
                                             global_norm, select)
from efficient_vdvae_jax.utils.state import init_state, merge_model, param_shapes, split_model


def train_noise(key, arch, batch_size):
    """Standard normal eps (B, H, W, V) for every latent layer, from ONE draw of shape (B, sum of H*W*V).

    Row b of the draw is example b's noise for all layers, so a batch sharded over devices draws the same
    values as on one device. (One draw compiles in a fraction of the time of one draw per layer.)
    """
    shapes = [(b.resolution, b.resolution, b.latent_variates) for b in arch.latent_layers]
    sizes = [int(np.prod(s)) for s in shapes]
    flat = jax.random.normal(key, (batch_size, sum(sizes)), jnp.float32)
    offsets = np.cumsum([0] + sizes)
    return [flat[:, o:o + n].reshape(batch_size, *s) for o, n, s in zip(offsets, sizes, shapes)]


def traced_values(values):
    """The StepValues of a step as NumPy scalars, the traced arguments of the jitted step."""
    return {"step": np.int32(values.step), "lr": np.float32(values.learning_rate), "beta": np.float32(values.kl_beta),
            "gamma_on": np.bool_(values.gamma_on), "clip_norm": np.float32(values.clip_norm),
            "skip_threshold": np.float32(values.skip_threshold)}


def make_train_step(graphdef, rest, config, arch, tx, mask):
    """fn(state, images, hyper, noise=None) -> (state, metrics): one iteration on the global batch."""
    l2 = config.loss.l2_weight if config.loss.use_weight_decay else 0.0
    decay = config.train.ema_decay
    dtype = jnp.bfloat16 if config.train.mixed_precision == "bf16" else None

    def step_fn(state, images, hyper, noise=None):
        if noise is None:
            noise = train_noise(seed_key(config.run.seed, TRAIN_LATENTS, hyper["step"]), arch, images.shape[0])

        def loss_fn(params):
            model = merge_model(graphdef, params, rest)
            with compute_dtype(dtype):
                logits, posteriors, priors = model(images, noise=noise)
            obj = vae_objective(logits.astype(jnp.float32), images, posteriors, priors, config, beta=hyper["beta"],
                                gamma_on=hyper["gamma_on"], batch_size=images.shape[0])
            return obj.loss, {"recon": obj.recon_nats_per_dim, "kl": obj.kl_nats_per_dim,
                              "kl_layers": obj.kl_per_layer_bits_per_latent}

        (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        norm = global_norm(grads)
        skipped = ~(norm < hyper["skip_threshold"])
        grads = clip_by_norm(grads, hyper["clip_norm"], norm)
        direction, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = apply_update(state["params"], direction, hyper["lr"], mask, l2)
        updated = {"params": params, "opt_state": opt_state, "ema": ema_update(state["ema"], params, decay)}
        return select(skipped, state, updated), dict(parts, norm=norm, skipped=skipped), grads

    return step_fn


PROGRAMS_KEPT = 4  # configs whose programs a process keeps


def program_key(config):
    """The parts of a config that the jitted step, evaluation and sampling programs read (and nothing else)."""
    return (config.model, config.data, config.loss, config.optimizer, config.run.seed, config.train.ema_decay,
            config.train.mixed_precision, config.train.activation_checkpointing, config.synthesis.output_temperature)


@dataclass
class Programs:
    """The jitted functions of one program_key on one mesh, with the model structure they close over."""
    graphdef: object
    rest: object
    config: object
    arch: object
    step: object
    evaluations: dict = field(default_factory=dict)  # randomness purpose -> jitted evaluation
    prior: dict = field(default_factory=dict)  # batch size -> jitted prior sampling

    def evaluation(self, purpose):
        """The jitted evaluation of one randomness purpose (validation, or the last training batch)."""
        if purpose not in self.evaluations:
            self.evaluations[purpose] = evaluate_batch_fn(self.graphdef, self.rest, self.config, self.arch, purpose)
        return self.evaluations[purpose]


_programs = OrderedDict()  # (program_key, mesh) -> Programs, most recently used last


def programs(config, mesh, graphdef, rest, arch, tx, mask):
    """The Programs of `config` on `mesh`, traced once per process (the model's tracing takes seconds).

    The other arguments (the split model, architecture, optimizer and decay mask of `config`) build them
    when the process has none for this program_key yet.
    """
    key = (program_key(config), mesh)
    if key in _programs:
        _programs.move_to_end(key)
        return _programs[key]
    step_fn = make_train_step(graphdef, rest, config, arch, tx, mask)
    _programs[key] = Programs(graphdef, rest, config, arch,
                              jax.jit(step_fn, donate_argnums=0, out_shardings=D.replicated(mesh)))
    while len(_programs) > PROGRAMS_KEPT:
        _programs.popitem(last=False)
    return _programs[key]


class JaxTrainer:
    """Owns the model structure, the replicated TrainState on the mesh and the jitted functions of one run."""

    def __init__(self, config, dist, log=print, mesh=None):
        self.config, self.dist, self.log = config, dist, log
        self.mesh = D.make_mesh() if mesh is None else mesh
        self.arch = build_architecture(config.model, config.data)
        model = build_model(config)
        model.bottom_up.checkpoint_blocks = model.top_down.checkpoint_blocks = config.train.activation_checkpointing
        graphdef, params, rest = split_model(model)
        self.tx = build_direction(config.optimizer)
        self.programs = programs(config, self.mesh, graphdef, rest, self.arch, self.tx, decay_mask(params))
        self.train_state = D.put_replicated(self.mesh, init_state(params, self.tx))
        self.codec = OrbaxCodec(abstract_like(self.train_state))
        self._last_grads = None

    # ---------------------------------------------------------------------------- checkpoints
    def state(self):
        return self.train_state

    def load_state(self, checkpoint, resume_from_ema):
        state = checkpoint.state
        if "original" in state:  # the original code's file (either framework): weights, EMA and Adamax moments
            original = state["original"]
            check_original_resumable(original, self.param_shapes(), self.config.optimizer)
            params, ema = param_trees(original)
            ema = params if ema is None else ema
            state = {"params": params, "ema": ema, "opt_state": adamax_state(original, params)}
            state = D.put_replicated(self.mesh, state)
        self.train_state = state
        if resume_from_ema:
            self._set_weights(state["ema"], state["ema"])

    def load_weights(self, weights):
        check_fits(weights, self.param_shapes())
        tree = (lambda sd: torch_state_dict_to_jax(sd))
        self._set_weights(tree(weights.params), tree(weights.ema if weights.ema is not None else weights.params))

    def param_shapes(self):
        return param_shapes(self.config)

    def _set_weights(self, params, ema):
        put = (lambda tree: D.put_replicated(self.mesh, jax.tree.map(jnp.asarray, tree)))
        self.train_state = dict(self.train_state, params=put(params), ema=put(ema))

    # ----------------------------------------------------------------------------------- steps
    def train_batches(self, dataset, start_step):
        for images in TrainStream(self.config, start_step=start_step, images=dataset):
            yield images

    def train_step(self, images, values, noise=None):
        batch = D.global_batch(self.mesh, np.asarray(images, np.float32))
        self.train_state, out, self._last_grads = self.programs.step(self.train_state, batch, traced_values(values),
                                                                     noise)
        out = {k: D.to_host(v) for k, v in out.items()}
        return StepOutput(recon_nats_per_dim=float(out["recon"]), kl_nats_per_dim=float(out["kl"]),
                          kl_per_layer_bits=np.asarray(out["kl_layers"], np.float64), grad_norm=float(out["norm"]),
                          skipped=bool(out["skipped"]))

    # ------------------------------------------------------------------------------ evaluation
    def eval_batches(self, dataset, plan):
        return plan_batches(self.config, dataset, plan)

    def evaluate(self, images, rows, counter, details, purpose=EVALUATION):
        n = len(rows.images)
        start = self.dist.process_index * n
        result = self.programs.evaluation(purpose)(self.train_state["params"], D.global_batch(self.mesh, images),
                                                  D.global_batch(self.mesh, np.asarray(rows.images, np.int32)),
                                                  np.int32(counter))
        return eval_output(result, self.config, (start, start + n), images, details)

    def parameters_and_gradients(self):
        """{torch state_dict name: (weights, gradients of the last step or None)} as NumPy arrays (PyTorch layout)."""
        weights = jax_params_to_torch_state_dict(jax.tree.map(D.to_host, self.train_state["params"]))
        grads = (None if self._last_grads is None
                 else jax_params_to_torch_state_dict(jax.tree.map(D.to_host, self._last_grads)))
        return {name: (value, None if grads is None else grads[name]) for name, value in weights.items()}

    def prior_samples(self, n, counter, ema=True):
        prior = self.programs.prior
        if n not in prior:
            prior[n] = prior_sample_fn(self.programs.graphdef, self.programs.rest, self.config, self.arch, n,
                                       self.mesh, PRIOR_SAMPLES)
        temperatures = np.ones(self.arch.n_latent_layers, np.float32)
        weights = self.train_state["ema" if ema else "params"]
        samples, logits = prior[n](weights, temperatures, np.arange(n, dtype=np.int32), np.int32(counter))
        return np.asarray(D.to_host(samples), np.float32), output_means(D.to_host(logits), self.config)

    # ----------------------------------------------------------------------------- processes
    def all_reduce_sum(self, array):
        return D.all_reduce_sum(np.asarray(array, np.float64))

    def barrier(self):
        D.sync("efficient_vdvae barrier")

    def is_lost_process(self, exc):
        """False: JAX's coordination service ends every process itself when one of them is lost."""
        return False

    def close(self):
        pass

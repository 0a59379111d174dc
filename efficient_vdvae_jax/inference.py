"""The JAX inference backend: one model's parameters replicated over every device, the synthesis kernels.

Each kernel is jitted once per batch shape; batches follow the core's EvalPlan (a fixed global size, a
multiple of the device count) and are sharded over the mesh. Inputs and outputs are NumPy NHWC; every
random draw of image i is its own (`efficient_vdvae_jax.evaluation.per_image_draw`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.randomness import (DECODING, DIV_STATS, ENCODING, EVALUATION, GENERATION, IW_NLL,
                                             PRIOR_STREAM)
from efficient_vdvae_core.params import torch_state_dict_to_jax
from efficient_vdvae_jax.data.loaders import plan_batches
from efficient_vdvae_jax.evaluation import (eval_output, evaluate_batch_fn, image_noise, output_noise, prior_sample_fn,
                                            seed_key)
from efficient_vdvae_jax.model.autoencoder import build_model
from efficient_vdvae_jax.model.likelihood import importance_terms
from efficient_vdvae_jax.model.losses import gaussian_kl
from efficient_vdvae_jax.model.sampling import output_samples
from efficient_vdvae_jax.utils import distributed as D
from efficient_vdvae_jax.utils.state import merge_model, split_model


def mask_arrays(masks):
    """Per-layer float32 (V,) arrays (1 = posterior, 0 = prior) of boolean masks (N_lat, V), or None."""
    return None if masks is None else [np.asarray(row, dtype=np.float32) for row in masks]


class JaxInference:
    """The model of a synthesis, with the synthesis modes' kernels (the core's InferenceBackend)."""

    def __init__(self, config, dist, params, log=print, mesh=None):
        self.config, self.dist = config, dist
        self.mesh = D.make_mesh() if mesh is None else mesh
        self.arch = build_architecture(config.model, config.data)
        self.graphdef, _, self.rest = split_model(build_model(config))
        self.params = D.put_replicated(self.mesh, jax.tree.map(jnp.asarray, torch_state_dict_to_jax(params)))
        self._evaluate = evaluate_batch_fn(self.graphdef, self.rest, config, self.arch, EVALUATION)
        self._kernels = {}
        log(f"Running on {dist.description}")

    def _global(self, local):
        return D.global_batch(self.mesh, np.asarray(local))

    def _local(self, array, n):
        start = self.dist.process_index * n
        return np.asarray(D.to_host(array))[start:start + n]

    def eval_batches(self, dataset, plan):
        return plan_batches(self.config, dataset, plan)

    def reconstruct(self, images, rows, masks):
        n = len(rows.images)
        result = self._evaluate(self.params, self._global(images), self._global(np.asarray(rows.images, np.int32)),
                                np.int32(0), mask_arrays(masks))
        start = self.dist.process_index * n
        return eval_output(result, self.config, (start, start + n), images, details=True)

    def _kernel(self, name, build):
        if name not in self._kernels:
            self._kernels[name] = build()
        return self._kernels[name]

    def kl_per_variate(self, images, rows):
        m, arch, cfg = self.config.model, self.arch, self.config

        def build():
            def kl(params, images, indices):
                model = merge_model(self.graphdef, params, self.rest)
                noise = image_noise(seed_key(cfg.run.seed, DIV_STATS, 0), arch, indices)
                _, posteriors, priors = model(images, noise=noise)
                return jnp.stack([jnp.mean(gaussian_kl(post, prior, distribution_base=m.distribution_base,
                                                       beta=m.gradient_smoothing_beta), axis=(1, 2))
                                  for post, prior in zip(posteriors, priors)], axis=1)  # (B, N_lat, V)
            return jax.jit(kl)
        out = self._kernel("kl", build)(self.params, self._global(images), self._global(np.asarray(rows.images, np.int32)))
        return self._local(out, len(rows.images)).astype(np.float64)

    def posterior_means(self, images, rows, masks):
        m, arch, cfg = self.config.model, self.arch, self.config
        shapes = [(b.resolution, b.resolution, b.latent_variates) for b in arch.latent_layers]

        def build():
            def stats(params, images, indices, masks):
                model = merge_model(self.graphdef, params, self.rest)
                zeros = [jnp.zeros((images.shape[0], *s), images.dtype) for s in shapes]
                prior = image_noise(seed_key(cfg.run.seed, ENCODING, 0), arch, indices, PRIOR_STREAM)
                _, posteriors, _ = model(images, masks, zeros, prior)
                std = (lambda s: s if m.distribution_base == "std" else jnp.exp(m.gradient_smoothing_beta * s))
                return [(mean, std(scale)) for mean, scale in posteriors]
            return jax.jit(stats)
        out = self._kernel("posterior", build)(self.params, self._global(images),
                                               self._global(np.asarray(rows.images, np.int32)), mask_arrays(masks))
        n = len(rows.images)
        return [(self._local(mean, n), self._local(std, n)) for mean, std in out]

    def decode(self, latents, indices, temperatures=None, purpose=DECODING, counter=0):
        cfg, arch, n = self.config, self.arch, len(indices)

        def build():
            def decode(params, latents, indices, temperatures, counter):
                model = merge_model(self.graphdef, params, self.rest)
                key = seed_key(cfg.run.seed, purpose, counter)
                logits, _ = model.sample(n, [temperatures[i] for i in range(arch.n_latent_layers)], latents,
                                         noise=image_noise(key, arch, indices, PRIOR_STREAM))
                return output_samples(logits, cfg, None, noise=output_noise(key, cfg, indices))
            return jax.jit(decode)
        given = [None if e is None else (self._global(e[0]), jnp.asarray(e[1])) for e in latents]
        temperatures = np.ones(arch.n_latent_layers, np.float32) if temperatures is None else temperatures
        out = self._kernel(("decode", n, purpose), build)(self.params, given, self._global(np.asarray(indices, np.int32)),
                                                        jnp.asarray(temperatures, jnp.float32), np.int32(counter))
        return self._local(out, n).astype(np.float32)

    def iw_terms(self, images, rows, first_sample, n_samples):
        """Importance-sampling terms (NumPy, sample-major) of samples first_sample.. of every image."""
        cfg, arch = self.config, self.arch

        def build():
            def terms(params, images, indices, samples):
                model = merge_model(self.graphdef, params, self.rest)
                noise = jax.vmap(lambda s: image_noise(seed_key(cfg.run.seed, IW_NLL, s), arch, indices))(samples)
                return importance_terms(model, images, noise, cfg)
            return jax.jit(terms)
        samples = np.arange(first_sample, first_sample + n_samples, dtype=np.int32)
        out = self._kernel(("iw", n_samples), build)(self.params, self._global(images),
                                                     self._global(np.asarray(rows.images, np.int32)), samples)
        return tuple(np.asarray(D.to_host(t), np.float64) for t in out)

    def sample(self, indices, temperatures, counter):
        n = len(indices)
        fn = self._kernel(("sample", n), lambda: prior_sample_fn(self.graphdef, self.rest, self.config, self.arch, n,
                                                                self.mesh, GENERATION))
        samples, _ = fn(self.params, jnp.asarray(temperatures, jnp.float32), np.asarray(indices, np.int32),
                        np.int32(counter))
        return np.asarray(D.to_host(samples), np.float32)

    def all_reduce_sum(self, array):
        return D.all_reduce_sum(np.asarray(array, np.float64))

    def barrier(self):
        D.sync("efficient_vdvae synthesis barrier")

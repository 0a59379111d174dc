"""Optimizer maths of the PyTorch side, written for pytrees: Adamax/Adam/RAdam, decay, clip, skip, EMA.

The update of one parameter is `theta <- theta * (1 - lr * l2 * decays) - lr * u` with `u` the
optimizer's direction, exactly torch's `apply_weight_decay` followed by `optimizer.step()`. The
directions are torch's formulas (`scale_by_torch`), not optax's: optax's Adamax and Adam have the same
maths but compute the bias corrections 1 - beta^t in float32 from a float32 beta (1 - f32(0.999) is off
by 1.3e-5 relative), and optax's RAdam adds eps to sqrt(v_hat) instead of sqrt(v) and rectifies from
rho >= 5 instead of rho > 5. Here 1 - beta^t = -expm1(t ln beta) with ln beta taken in double precision,
which matches torch's double-precision bias corrections to float32 rounding. The learning rate is a
traced scalar computed on the host from `efficient_vdvae_core.schedules`.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# Must equal efficient_vdvae_torch.utils.optim.NO_DECAY_SUBSTRINGS (the JAX original's mask; a test checks).
NO_DECAY_SUBSTRINGS = ("bias", "input_conv", "output_conv", "ln", "trainable_h", "embedding_table",
                       "projection", "trainable_prior")
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: g * min(1, c / (norm + 1e-6))
RADAM_THRESHOLD = 5.0  # torch.optim.RAdam rectifies when rho_t > 5


def key_name(key):
    """The string of one pytree path entry (dict key, sequence index or attribute)."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_name(path):
    """'.'-joined parameter path, e.g. 'top_down.output_conv.bias' (the torch state_dict name)."""
    return ".".join(key_name(k) for k in path)


def decays(name):
    """True when weight decay applies to the parameter called `name`."""
    return not any(s in name for s in NO_DECAY_SUBSTRINGS)


def decay_mask(params):
    """A pytree of Python bools: which parameters weight decay applies to."""
    return jax.tree_util.tree_map_with_path(lambda path, _: decays(path_name(path)), params)


class TorchAdamState(NamedTuple):
    count: jax.Array  # int32 scalar: applied optimizer steps (torch's state['step'])
    mu: optax.Updates  # first moment (exp_avg)
    nu: optax.Updates  # exp_inf (Adamax) or exp_avg_sq (Adam, RAdam)


def one_minus_power(beta, t):
    """1 - beta^t for a float32 step t, accurate to float32 rounding (beta a Python float)."""
    if beta == 0:
        return jnp.ones_like(t)
    return -jnp.expm1(t * math.log(beta))


def _one_minus_x_over_expm1(x):
    """1 - x / (e^x - 1) without cancellation: its series below x = 1, the formula above."""
    series = x * (0.5 + x * (-1.0 / 12 + x * x * (1.0 / 720 + x * x * (-1.0 / 30240 + x * x / 1209600))))
    direct = 1.0 - x / jnp.expm1(jnp.maximum(x, 1.0))
    return jnp.where(x < 1.0, series, direct)


def radam_rho(beta2, t):
    """torch's rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t), free of the float32 cancellation near rho_inf.

    With c = -ln beta2 and x = c t: 2 t beta2^t / (1 - beta2^t) = (2 / c) (x / expm1(x)), so
    rho_t = (rho_inf - 2 / c) + (2 / c) (1 - x / expm1(x)); the first term is a double-precision constant.
    """
    c = -math.log(beta2)
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    return (rho_inf - 2.0 / c) + (2.0 / c) * _one_minus_x_over_expm1(c * t)


def scale_by_torch(kind, b1, b2, eps):
    """The direction u of torch.optim.{Adamax, Adam, RAdam} (the step is theta -= lr * u)."""
    if kind not in ("Adamax", "Adam", "RAdam"):
        raise ValueError(f"unknown optimizer type {kind!r}")
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def init_fn(params):
        return TorchAdamState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(jnp.zeros_like, params),
                              nu=jax.tree.map(jnp.zeros_like, params))

    def update_fn(grads, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(jnp.float32)
        bc1, bc2 = one_minus_power(b1, t), one_minus_power(b2, t)
        mu = jax.tree.map(lambda m, g: m + (1.0 - b1) * (g - m), state.mu, grads)  # torch's lerp
        if kind == "Adamax":
            nu = jax.tree.map(lambda v, g: jnp.maximum(b2 * v, jnp.abs(g) + eps), state.nu, grads)
            return jax.tree.map(lambda m, v: m / (bc1 * v), mu, nu), TorchAdamState(count, mu, nu)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, grads)
        if kind == "Adam":
            direction = jax.tree.map(lambda m, v: (m / bc1) / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps), mu, nu)
            return direction, TorchAdamState(count, mu, nu)
        rho_t = radam_rho(b2, t)
        rect = jnp.sqrt(jnp.maximum((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                                    / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.0))
        rectified = rho_t > RADAM_THRESHOLD

        def direction(m, v):
            m_hat = m / bc1
            return jnp.where(rectified, m_hat * rect * jnp.sqrt(bc2) / (jnp.sqrt(v) + eps), m_hat)

        return jax.tree.map(direction, mu, nu), TorchAdamState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def build_direction(opt_cfg):
    """The optax transformation giving the direction u of [optimizer] type (lr applied by `apply_update`)."""
    return scale_by_torch(opt_cfg.type, opt_cfg.beta1, opt_cfg.beta2, opt_cfg.epsilon)


def global_norm(grads):
    """L2 norm of all gradients together (inf/nan propagate)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)))


def clip_by_norm(grads, max_norm, norm):
    """g * min(1, max_norm / (norm + 1e-6)): torch's clip_grad_norm_ rule."""
    factor = jnp.minimum(1.0, max_norm / (norm + CLIP_EPS))
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), grads)


def should_skip(norm, opt_cfg):
    """Traced bool: skipping is on and the norm is non-finite or >= the threshold."""
    if not opt_cfg.gradient_skip:
        return jnp.zeros([], bool)
    return ~jnp.isfinite(norm) | (norm >= opt_cfg.gradient_skip_threshold)


def apply_update(params, direction, lr, mask, l2_weight):
    """theta * (1 - lr * l2) where `mask` (decayed parameters), then - lr * u."""
    def one(p, u, decayed):
        if decayed and l2_weight:
            p = p * (1.0 - lr * l2_weight)
        return p - lr * u
    return jax.tree.map(one, params, direction, mask)


def ema_update(ema, params, decay):
    """ema + (1 - decay) * (theta - ema), torch's lerp."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)


def select(pred, on_true, on_false):
    """Leafwise jnp.where(pred, on_true, on_false) over two pytrees of the same structure."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)

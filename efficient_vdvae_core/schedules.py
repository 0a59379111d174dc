"""Learning-rate, KL-weight (beta) and gamma-balancing schedules as pure functions of the step.

The step `t` is the 0-based training iteration index: the first batch uses t = 0 and a skipped
update still advances it (the PyTorch original's convention). Both frameworks call
these functions, so their schedules cannot drift apart. No framework imports here.
"""
import math
from dataclasses import dataclass


def _warmup_factor(step, warmup_steps):
    """min(1, t / warmup); no warmup (1.0) when warmup_steps <= 0 (the JAX original gave NaN)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def learning_rate(step, opt):
    """Learning rate at `step` for an OptimizerConfig `opt`.

    - 'constant': lr0 * min(1, t / warmup_steps); warmup_steps = 0 means no warmup.
    - 'noam': lr0 * sqrt(w) * min(t^-1/2, t * w^-3/2); peaks at lr0 at t = w, lr(0) = 0.
      Needs warmup_steps > 0.
    - 'cosine' (the JAX original's closed form, chosen over the PyTorch original whose recursive
      form is not relative to decay_start and climbs back after decay_steps): warmup to lr0,
      constant lr0 until decay_start, then a half cosine from lr0 down to min_learning_rate over
      decay_steps steps counted from decay_start, then min_learning_rate forever:
      u = min(t - decay_start, decay_steps), lr = min_lr + (lr0 - min_lr) * (1 + cos(pi u / decay_steps)) / 2.
    - 'exponential' (broken in both originals; this is their apparent intent): before
      decay_start lr0, from decay_start on clip(lr0 * decay_rate ** ((t - decay_start) / decay_steps),
      min_lr, lr0); the whole curve is multiplied by the warmup factor min(1, t / warmup_steps),
      which is "warmup, then the schedule" whenever warmup_steps <= decay_start.
    """
    scheme, lr0 = opt.learning_rate_scheme, opt.learning_rate
    t = float(step)
    if t < 0:
        raise ValueError(f"learning_rate: step must be >= 0 (got {step})")
    if scheme == "constant":
        return lr0 * _warmup_factor(t, opt.warmup_steps)
    if scheme == "noam":
        w = opt.warmup_steps
        if w <= 0:
            raise ValueError("learning_rate: the 'noam' scheme needs optimizer.warmup_steps > 0")
        if t == 0:
            return 0.0
        return lr0 * math.sqrt(w) * min(t ** -0.5, t * w ** -1.5)
    if scheme == "cosine":
        if t < opt.decay_start:
            return lr0 * _warmup_factor(t, opt.warmup_steps)
        u = min(t - opt.decay_start, opt.decay_steps)
        min_lr = opt.min_learning_rate
        return min_lr + (lr0 - min_lr) * 0.5 * (1.0 + math.cos(math.pi * u / opt.decay_steps))
    if scheme == "exponential":
        if t < opt.decay_start:
            base = lr0
        else:
            decayed = lr0 * opt.decay_rate ** ((t - opt.decay_start) / opt.decay_steps)
            base = min(max(decayed, opt.min_learning_rate), lr0)
        return base * _warmup_factor(t, opt.warmup_steps)
    raise ValueError(f"learning_rate: unknown learning_rate_scheme {scheme!r}")


def _sigmoid(x):
    """Overflow-free logistic function of a Python float."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def kl_beta(step, loss_cfg):
    """KL weight beta at `step` for a LossConfig.

    - 'None': 1.
    - 'Linear': clip((t - start) / (start + steps), beta_min, 1) with start = vae_beta_anneal_start,
      steps = vae_beta_anneal_steps. The denominator's extra `start` is the original's quirk, kept
      because it shapes the published results: beta first reaches 1 at t = 2 * start + steps
      (5042 with the defaults 21 / 5000). A zero denominator gives 1.
    - 'Logistic': 1 / (1 + exp(-growth_rate * (t - activation_steps))), no floor (works here; the
      PyTorch original crashed on it).
    """
    schedule = loss_cfg.variation_schedule
    if schedule == "None":
        return 1.0
    if schedule == "Linear":
        start, steps = loss_cfg.vae_beta_anneal_start, loss_cfg.vae_beta_anneal_steps
        if start + steps == 0:
            return 1.0
        return min(max((step - start) / (start + steps), loss_cfg.vae_beta_min), 1.0)
    if schedule == "Logistic":
        return _sigmoid(loss_cfg.vae_beta_growth_rate * (step - loss_cfg.vae_beta_activation_steps))
    raise ValueError(f"kl_beta: unknown variation_schedule {schedule!r}")


def gamma_active(step, loss_cfg):
    """True while NVAE gamma KL balancing applies: use_gamma_schedule and step <= gamma_max_steps."""
    return bool(loss_cfg.use_gamma_schedule) and step <= loss_cfg.gamma_max_steps


def inference_step(loss_cfg):
    """The step that evaluation and synthesis pass to the loss: annealing over, gamma off.

    The original uses 10 * max(vae_beta_anneal_steps, gamma_max_steps); this returns at least that,
    raised where needed so that gamma is always off (> gamma_max_steps) and a 'Linear' beta has
    reached 1 (>= 2 * start + steps). Equal to the original for every shipped config. A 'Logistic'
    beta may still be below 1 there; reported NELBO values never use beta.
    """
    original = 10 * max(loss_cfg.vae_beta_anneal_steps, loss_cfg.gamma_max_steps)
    linear_end = 2 * loss_cfg.vae_beta_anneal_start + loss_cfg.vae_beta_anneal_steps
    return max(original, loss_cfg.gamma_max_steps + 1, linear_end)


@dataclass(frozen=True)
class StepValues:
    """Everything a training step needs from the schedules and the update rules, for iteration `step`."""
    step: int
    learning_rate: float
    kl_beta: float
    gamma_on: bool
    clip_norm: float  # the clipping threshold; inf when clipping is off (leaves the gradients unchanged)
    skip_threshold: float  # skip the update unless grad_norm < skip_threshold (inf when skipping is off)


def skip_threshold(opt):
    """The one skip rule of both frameworks: an update is skipped unless `grad_norm < skip_threshold(opt)`.

    So a non-finite norm (NaN, inf) is always skipped, and a finite one when [optimizer] gradient_skip is
    on and the norm is >= gradient_skip_threshold.
    """
    return float(opt.gradient_skip_threshold) if opt.gradient_skip else math.inf


def is_skipped(grad_norm, threshold):
    """The skip rule for a host float: not (grad_norm < threshold)."""
    return not (grad_norm < threshold)


def step_values(step, config):
    """StepValues of iteration `step` (0-based; skipped iterations count) for a Config."""
    opt = config.optimizer
    return StepValues(step=int(step), learning_rate=learning_rate(step, opt), kl_beta=kl_beta(step, config.loss),
                      gamma_on=gamma_active(step, config.loss),
                      clip_norm=float(opt.gradient_clip_norm_value) if opt.clip_gradient_norm else math.inf,
                      skip_threshold=skip_threshold(opt))

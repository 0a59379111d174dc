"""Optimizer, decoupled weight decay, gradient clipping/skipping and EMA."""
import math

import torch

# A parameter is decayed unless its name contains one of these (the JAX original's mask).
NO_DECAY_SUBSTRINGS = ("bias", "input_conv", "output_conv", "ln", "trainable_h", "embedding_table",
                       "projection", "trainable_prior")


def decays(name):
    """True when weight decay applies to the parameter called `name`."""
    return not any(s in name for s in NO_DECAY_SUBSTRINGS)


def build_optimizer(model, opt_cfg):
    """Adamax / Adam / RAdam over all parameters; the LR is set per step by `set_learning_rate`.

    Adamax is PyTorch's (u = max(beta2 u, |g| + eps), bias-corrected first moment), the
    original's maths. Weight decay is applied separately (`apply_weight_decay`), AdamW-style.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=0.0, betas=(opt_cfg.beta1, opt_cfg.beta2), eps=opt_cfg.epsilon, weight_decay=0.0, foreach=True)
    if opt_cfg.type == "Adamax":
        return torch.optim.Adamax(params, **kwargs)
    if opt_cfg.type == "Adam":
        return torch.optim.Adam(params, **kwargs)
    return torch.optim.RAdam(params, **kwargs)


def set_learning_rate(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def decayed_parameters(model):
    """Parameters that weight decay applies to (see NO_DECAY_SUBSTRINGS)."""
    return [p for name, p in model.named_parameters() if p.requires_grad and decays(name)]


@torch.no_grad()
def apply_weight_decay(params, lr, l2_weight):
    """theta <- theta * (1 - lr * l2_weight): decoupled decay scaled by the LR, before the step."""
    if lr * l2_weight:
        for p in params:
            p.mul_(1.0 - lr * l2_weight)


def gradient_norm(params):
    """Global L2 norm of all gradients (a 0-dim tensor; inf/nan propagate)."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def clip_gradients(params, max_norm, total_norm):
    """g <- g * min(1, max_norm / (norm + 1e-6)), PyTorch's clip_grad_norm_ rule."""
    torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, total_norm)


def should_skip(norm, opt_cfg):
    """Skip a non-finite update always, and one whose norm is >= the threshold when skipping is on."""
    if not math.isfinite(norm):
        return True
    return opt_cfg.gradient_skip and norm >= opt_cfg.gradient_skip_threshold


class EMA:
    """Exponential moving average of parameters: ema <- d * ema + (1 - d) * theta."""

    def __init__(self, model, decay):
        self.decay = decay
        self.params = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model):
        for ema, p in zip(self.params, model.parameters()):
            ema.lerp_(p.detach(), 1.0 - self.decay)

    def state_dict(self, model):
        """A state_dict of `model`'s structure holding the EMA weights."""
        names = [n for n, _ in model.named_parameters()]
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state.update({n: e.clone() for n, e in zip(names, self.params)})
        return state

    @torch.no_grad()
    def load_state_dict(self, model, state):
        for (name, _), ema in zip(model.named_parameters(), self.params):
            ema.copy_(state[name])

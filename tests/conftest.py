"""Shared test fixtures: repository paths, the tiny configs, the reference data of the original code."""
import importlib.util
import os
from pathlib import Path

import pytest

from efficient_vdvae_core.config import load_config

# Before any test module creates the XLA backend: the tiny models compile much faster this way.
XLA_TEST_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", XLA_TEST_FLAGS)
if importlib.util.find_spec("jax") is not None:  # the convolution path of train.py (efficient_vdvae_jax.utils.cpu)
    from efficient_vdvae_jax.utils.cpu import eigen_convolutions
    eigen_convolutions()

REPO = Path(__file__).resolve().parents[1]
EGS = REPO / "egs"
REFERENCE = REPO / "tests" / "data"  # recorded from the original code: see its README.md


def at_step(step, config):
    """The loss's schedule arguments at `step`: {'beta': ..., 'gamma_on': ...} for vae_objective."""
    from efficient_vdvae_core.schedules import gamma_active, kl_beta
    return {"beta": kl_beta(step, config.loss), "gamma_on": gamma_active(step, config.loss)}


def egs_config(name, *overrides):
    """Load egs/<name>.cfg with optional 'section.key=value' overrides."""
    return load_config(EGS / f"{name}.cfg", list(overrides))[0]


@pytest.fixture
def tiny_config():
    return egs_config("tiny")


@pytest.fixture
def tiny_binarized_config():
    return egs_config("tiny_binarized")


@pytest.fixture(scope="session")
def reference_dir():
    return REFERENCE


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run faster on one thread, and concurrent test processes do not oversubscribe the cores."""
    import torch
    torch.set_num_threads(1)

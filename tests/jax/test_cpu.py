"""utils.cpu: a jitted CPU step reuses its temporary buffer's pages from one call to the next, and convolutions
leave YNNPACK for XLA's Eigen path unless XLA_FLAGS says otherwise."""
import json
import os
import subprocess
import sys

import pytest

from efficient_vdvae_core.allocator import ENV_VAR, on_glibc

from efficient_vdvae_jax.utils.cpu import EIGEN_CONVOLUTIONS

glibc_only = pytest.mark.skipif(not on_glibc(), reason="mallopt is glibc's")

# A step whose temporary buffer (a 144 MB matrix, the input of a product) is larger than glibc's 64 MB
# per-thread heaps: page faults of three calls after three warm-up calls.
SIDE = 6000
SCRIPT = f"""
import json, resource
from efficient_vdvae_jax.utils.cpu import retain_freed_memory
applied = retain_freed_memory()
import jax, jax.numpy as jnp

@jax.jit
def step(v):
    return (jnp.exp(jnp.outer(v, v)) @ v).sum()  # the matrix is written out for the product

v = jnp.ones({SIDE}, jnp.float32)
temp = step.lower(v).compile().memory_analysis().temp_size_in_bytes
for _ in range(3):
    step(v).block_until_ready()
faults = []
for _ in range(3):  # the fewest of three rounds: one run in about ten had a round with 35k faults
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step(v).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = min(faults)
print(json.dumps({{"applied": applied, "temp": temp, "faults": faults,
                  "async": jax.config.values["jax_cpu_enable_async_dispatch"]}}))
"""
PAGES = 3 * SIDE * SIDE * 4 // 4096


def _run(script, **env):
    """Run `script` in a fresh CPU-only Python with these environment variables; its last line's JSON."""
    env = dict(os.environ, **env, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _calls(setting):
    return _run(SCRIPT, **{ENV_VAR: setting})


@glibc_only
def test_step_buffers_are_reused():
    kept = _calls("1")
    assert kept["applied"] is True and kept["async"] is False
    assert kept["temp"] >= SIDE * SIDE * 4  # the buffer is XLA's temporary, allocated each call
    assert kept["faults"] < PAGES // 10


@glibc_only
def test_environment_variable_keeps_the_defaults():
    default = _calls("0")
    assert default["applied"] is False and default["async"] is True
    # each call maps a fresh buffer: one fault per 4 KiB page, or per 2 MiB huge page
    assert default["faults"] > PAGES // 512


# A 3x3 convolution large enough for this jaxlib to hand it to YNNPACK by default (2x8x8x16 is not).
CONV_SCRIPT = """
import json, os
from efficient_vdvae_jax.utils import cpu
added = cpu.eigen_convolutions()
import jax, jax.numpy as jnp
conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
hlo = jax.jit(conv).lower(jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
print(json.dumps({"added": added, "flags": os.environ["XLA_FLAGS"], "ynnpack": "ynn_fusion" in hlo}))
"""


def _conv(xla_flags):
    return _run(CONV_SCRIPT, XLA_FLAGS=xla_flags)


def test_convolutions_leave_ynnpack():
    run = _conv("--xla_cpu_multi_thread_eigen=true")
    assert run["added"] is True and run["ynnpack"] is False
    assert run["flags"] == f"--xla_cpu_multi_thread_eigen=true {EIGEN_CONVOLUTIONS}"


def test_a_users_ynnpack_setting_is_kept():
    run = _conv("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution")
    assert run["added"] is False and run["ynnpack"] is True  # XLA's default, which this test also checks

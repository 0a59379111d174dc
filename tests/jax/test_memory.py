"""utils.memory.retain_freed_memory: a jitted CPU step reuses its temporary buffer's pages from one call to the next."""
import json
import os
import subprocess
import sys

import pytest

from efficient_vdvae_core.allocator import ENV_VAR, on_glibc

pytestmark = pytest.mark.skipif(not on_glibc(), reason="mallopt is glibc's")

# A step whose temporary buffer (a 144 MB matrix, the input of a product) is larger than glibc's 64 MB
# per-thread heaps: page faults of three calls after three warm-up calls.
SIDE = 6000
SCRIPT = f"""
import json, resource
from efficient_vdvae_jax.utils.memory import retain_freed_memory
applied = retain_freed_memory()
import jax, jax.numpy as jnp

@jax.jit
def step(v):
    return (jnp.exp(jnp.outer(v, v)) @ v).sum()  # the matrix is written out for the product

v = jnp.ones({SIDE}, jnp.float32)
temp = step.lower(v).compile().memory_analysis().temp_size_in_bytes
for _ in range(3):
    step(v).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step(v).block_until_ready()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({{"applied": applied, "temp": temp, "faults": faults,
                  "async": jax.config.values["jax_cpu_enable_async_dispatch"]}}))
"""
PAGES = 3 * SIDE * SIDE * 4 // 4096


def _calls(setting):
    env = dict(os.environ, **{ENV_VAR: setting}, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_step_buffers_are_reused():
    kept = _calls("1")
    assert kept["applied"] is True and kept["async"] is False
    assert kept["temp"] >= SIDE * SIDE * 4  # the buffer is XLA's temporary, allocated each call
    assert kept["faults"] < PAGES // 10


def test_environment_variable_keeps_the_defaults():
    default = _calls("0")
    assert default["applied"] is False and default["async"] is True
    # each call maps a fresh buffer: one fault per 4 KiB page, or per 2 MiB huge page
    assert default["faults"] > PAGES // 512

"""retain_freed_memory: a second round of the same allocations reuses the pages of the first."""
import json
import os
import subprocess
import sys

import pytest

from efficient_vdvae_core.allocator import ENV_VAR, on_glibc

pytestmark = pytest.mark.skipif(not on_glibc(), reason="mallopt is glibc's")

# Five 40 MB buffers, freed, then allocated again (as a training step does): page faults of round two.
# glibc's default serves buffers over 32 MB with mmap whatever its dynamic threshold, so they fault anew.
SCRIPT = """
import ctypes, json, resource
from efficient_vdvae_core.allocator import retain_freed_memory
applied = retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def round_():
    buffers = [libc.malloc(40_000_000) for _ in range(5)]
    for b in buffers:
        ctypes.memset(b, 1, 40_000_000)
    for b in buffers:
        libc.free(b)
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
PAGES = 5 * 40_000_000 // 4096


def _round_two(setting):
    env = dict(os.environ, **{ENV_VAR: setting})
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_freed_memory_is_reused():
    kept = _round_two("1")
    assert kept["applied"] is True
    assert kept["faults"] < PAGES // 10


def test_environment_variable_keeps_glibc_defaults():
    default = _round_two("0")
    assert default["applied"] is False
    # the pages went back to the kernel and fault in again: one fault per 4 KiB page, or per 2 MiB
    # huge page where transparent huge pages are always on
    assert default["faults"] > PAGES // 512

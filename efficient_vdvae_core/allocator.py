"""Keep freed heap memory in the process so that each training step reuses the previous step's pages.

A training step allocates and frees the same large activation buffers (tens of MB each) over and
over. glibc's malloc returns such buffers to the kernel on `free` (they are mmap-ed, or they trim
the top of the heap), so the next step faults every page in again and the kernel zeroes it, which
costs a noticeable part of each step on the CPU (figures in bench/README.md). JAX needs one more
setting for it to reach XLA's step buffer: `efficient_vdvae_jax.utils.cpu.retain_freed_memory`.
The peak memory is about unchanged: the same buffers are reused; only the memory freed after the
peak stays with the process until it exits.

Set EFFICIENT_VDVAE_KEEP_FREED_MEMORY=0 to keep glibc's defaults. Other C libraries: nothing is done.
"""
import ctypes
import os
import platform

ENV_VAR = "EFFICIENT_VDVAE_KEEP_FREED_MEMORY"

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def on_glibc():
    """Whether this process runs on Linux with glibc, whose malloc `mallopt` tunes."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def retain_freed_memory():
    """Tell glibc's malloc never to mmap allocations nor trim the heap (mallopt(3)); True if done.

    `M_MMAP_MAX = 0` serves every allocation from the heap and `M_TRIM_THRESHOLD = -1` stops the
    heap from shrinking, both as documented in mallopt(3). Call it once, early, in the entry points
    (train.py, synthesize.py, bench/train_step.py; JAX's through its wrapper); it does nothing off glibc
    or when the environment variable EFFICIENT_VDVAE_KEEP_FREED_MEMORY is 0.
    """
    if os.environ.get(ENV_VAR, "1").strip() == "0" or not on_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1

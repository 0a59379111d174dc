"""How JAX runs on the CPU here: freed memory kept for the next step, and convolutions on XLA's Eigen path.

`prepare()` applies both; the entry points (train.py, synthesize.py, bench/train_step.py) call it first
thing, before the first JAX computation: XLA reads both settings when it creates the CPU client.

Kept memory: XLA:CPU allocates the temporary buffer of a whole jitted step when the step starts and
frees it when the step ends (several GiB for the large configs). With JAX's asynchronous CPU dispatch the step
runs on a worker thread, and glibc serves a block that large to a thread other than the main one with
mmap whatever `M_MMAP_MAX` says (its per-thread heaps are at most 64 MB), then unmaps it on free: every
step faulted in and zeroed the whole buffer again. Executing on the calling thread serves the buffer
from the main heap, which `efficient_vdvae_core.allocator` keeps: no page faults once the heap has
grown, and shorter steps (bench/README.md). Nothing is lost by it here: the training loop reads every
step's metrics back at once, so the dispatch never ran ahead of the step anyway.

Convolutions: this jaxlib hands convolutions to YNNPACK by default (`xla_cpu_experimental_ynn_fusion_type`
includes `individual_convolution`). XLA's Eigen convolutions are faster at every shape of the example
configs, their gradients most of all (bench/conv_paths.py times both). Only the convolutions leave
YNNPACK; its dots and reductions stay.
"""
import os

from efficient_vdvae_core.allocator import retain_freed_memory as _retain_heap

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"{YNN_FLAG}=-individual_convolution"


def retain_freed_memory():
    """`efficient_vdvae_core.allocator.retain_freed_memory`, and if it applied, run CPU steps on the calling
    thread (`jax_cpu_enable_async_dispatch = False`). True if applied.

    EFFICIENT_VDVAE_KEEP_FREED_MEMORY=0 turns both off.
    """
    if not _retain_heap():
        return False
    import jax  # here, so that eigen_convolutions (tests/conftest.py) does not import JAX
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def eigen_convolutions():
    """Add `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` to XLA_FLAGS. True if added.

    A user's own setting of that flag in XLA_FLAGS is left as it is (to keep XLA's default, set
    `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
    return True


def prepare():
    """Both settings of this module, before the first JAX computation; what applied, for logs and benchmarks."""
    return {"keep_freed_memory": retain_freed_memory(), "eigen_convolutions": eigen_convolutions()}

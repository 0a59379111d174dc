"""How JAX runs on the CPU here: freed memory kept for the next step, and convolutions on XLA's Eigen path.

`prepare()` applies both; the entry points (train.py, synthesize.py, bench/train_step.py) call it first
thing, before the first JAX computation: XLA reads both settings when it creates the CPU client.

Kept memory: XLA:CPU allocates the temporary buffer of a whole jitted step when the step starts and frees
it when the step ends (6.6 GiB for cifar10_baseline at batch 8, 0.8 GiB for binarized_mnist_baseline at
batch 16). With JAX's asynchronous CPU dispatch the step runs on a worker thread, and glibc serves a block that
large to a thread other than the main one with mmap whatever `M_MMAP_MAX` says (its per-thread heaps are
at most 64 MB), then unmaps it on free: every step faulted in and zeroed the whole buffer again, about
257,000 page faults a step for binarized_mnist_baseline. Executing on the calling thread serves the buffer
from the main heap, which `efficient_vdvae_core.allocator` keeps: no page faults once the heap has grown
(measured with `ru_minflt`), and binarized_mnist_baseline's step went from 1.73 to 1.59 s on the 2-core CI
machine. Nothing is lost by it here: the training loop reads every step's metrics back at once, so the
dispatch never ran ahead of the step anyway.

Convolutions: this jaxlib hands convolutions to YNNPACK by default (`xla_cpu_experimental_ynn_fusion_type`
includes `individual_convolution`). XLA's Eigen convolutions are faster at every shape of the example
configs, their gradients most of all: a 3x3 at 8x32x32x96 takes 5.7 vs 8.0 ms forward, and 18.8 vs 44.5 ms
with both gradients (bench/conv_paths.py, both paths alternating in one process). Only the convolutions
leave YNNPACK; its dots and reductions stay.
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

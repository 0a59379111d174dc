"""Keep freed memory for the next step under JAX: the allocator setting of both frameworks, plus one of JAX's.

XLA:CPU allocates the temporary buffer of a whole jitted step when the step starts and frees it when the
step ends (7.3 GB for cifar10_baseline at batch 8, 1 GB for binarized_mnist_baseline at batch 16). With
JAX's asynchronous CPU dispatch the step runs on a worker thread, and glibc serves a block that large to a
thread other than the main one with mmap whatever `M_MMAP_MAX` says (its per-thread heaps are at most 64
MB), then unmaps it on free: every step faulted in and zeroed the whole buffer again, about 257,000 page
faults a step for binarized_mnist_baseline. Executing on the calling thread serves the buffer from the main
heap, which `efficient_vdvae_core.allocator` keeps: no page faults once the heap has grown (measured with
`ru_minflt`), and binarized_mnist_baseline's step went from 1.73 to 1.59 s on the 2-core CI machine.

Nothing is lost by it here: the training loop reads every step's metrics back at once, so the dispatch
never ran ahead of the step anyway. It changes nothing off the CPU.
"""
import jax

from efficient_vdvae_core.allocator import retain_freed_memory as _retain_heap


def retain_freed_memory():
    """`efficient_vdvae_core.allocator.retain_freed_memory`, and if it applied, run CPU steps on the calling
    thread (`jax_cpu_enable_async_dispatch = False`). True if applied.

    Call it before the first JAX computation (the CPU client reads the setting when it is created):
    the entry points call it first thing. EFFICIENT_VDVAE_KEEP_FREED_MEMORY=0 turns both off.
    """
    if not _retain_heap():
        return False
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True

"""What the core drivers call in JAX: processes and devices, model shapes, weights, the backends."""
import jax

from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.memory import host_memory_available
from efficient_vdvae_core.precision import cpu_bf16_flags
from efficient_vdvae_core.training.backend import Dist
from efficient_vdvae_jax.utils import distributed as D
from efficient_vdvae_jax.utils.checkpoint import read_weights  # noqa: F401  (a Framework function)
from efficient_vdvae_jax.utils.state import param_shapes  # noqa: F401  (a Framework function)

name = "jax"
checkpoint_suffix = ""  # checkpoint_<step>/ Orbax folders

TORCH_ONLY = {"compile": "torch.compile; JAX always compiles the step with XLA",
              "channels_last": "a PyTorch memory format; XLA chooses the layouts itself"}


def init_distributed(config):
    """Join the multi-process job the environment describes (if any); every device of every process is a replica.

    [run] device = 'cuda' without a GPU visible to JAX is refused, as in PyTorch.
    """
    D.init_distributed()  # before anything asks for the devices
    if config.run.device == "cuda" and jax.default_backend() != "gpu":
        raise UserError("[run] device = 'cuda' but no CUDA device is visible; set device = 'auto' or 'cpu'")
    n_devices = len(jax.devices())
    return Dist(process_index=jax.process_index(), n_processes=jax.process_count(), n_shards=n_devices,
                description=f"{n_devices} device(s) ({jax.devices()[0].platform}) in {jax.process_count()} process(es)")


def memory_available(dist):
    """(free bytes, where, replicas sharing them) of this process's first device: a GPU's memory pool, or the RAM
    of the machine for CPU devices (all of this process's devices share it)."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"{device.platform} device {device.id}", 1
    return host_memory_available(), "this machine's RAM", jax.local_device_count()


def shutdown():
    """Leave the multi-process job together (a barrier, then jax.distributed.shutdown)."""
    if jax.process_count() > 1:
        D.sync("efficient_vdvae shutdown")
        jax.distributed.shutdown()


def barrier():
    D.sync("efficient_vdvae barrier")


def check_options(config):
    """UserError for the [train] options that have no meaning in JAX."""
    for key, why in TORCH_ONLY.items():
        if getattr(config.train, key):
            raise UserError(f"[train] {key} = True is a PyTorch option ({why}): set it to False for JAX")


def bf16_support(dist):
    """(whether this process's devices run bf16 at speed, the device in words): a GPU of compute capability >= 8.0,
    a CPU with bf16 instructions."""
    device = jax.local_devices()[0]
    if device.platform == "gpu":
        capability = getattr(device, "compute_capability", "0")
        return float(capability) >= 8.0, f"GPU {device.id} (compute capability {capability})"
    return bool(cpu_bf16_flags()), "this machine's CPU"


def trainer(config, dist, log=print):
    from efficient_vdvae_jax.trainer import JaxTrainer
    return JaxTrainer(config, dist, log)


def inference(config, dist, params, log=print):
    from efficient_vdvae_jax.inference import JaxInference
    return JaxInference(config, dist, params, log)


def sample_quality_scorer():
    """The PyTorch side's scorer (its Inception network is TorchScript), or None without torch."""
    try:
        from efficient_vdvae_torch.backend import sample_quality_scorer as torch_scorer
    except ImportError:
        return None
    return torch_scorer()

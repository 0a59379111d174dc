"""What the core drivers call in PyTorch: processes and devices, model shapes, weights, the backends."""
import os
from dataclasses import dataclass

import torch

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.memory import host_memory_available
from efficient_vdvae_core.precision import cpu_bf16_flags
from efficient_vdvae_core.training.backend import Dist
from efficient_vdvae_torch.model.autoencoder import Autoencoder
from efficient_vdvae_torch.utils import distributed
from efficient_vdvae_torch.utils.checkpoint import read_weights  # noqa: F401  (the Framework function)

name = "torch"
checkpoint_suffix = ".pt"


@dataclass(frozen=True)
class TorchDist(Dist):
    """The torchrun process layout and this process's device."""
    device: torch.device = torch.device("cpu")
    local_rank: int = 0


def init_distributed(config):
    """Join the torchrun process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    info = distributed.init_distributed(config.run.device)
    return TorchDist(process_index=info.rank, n_processes=info.world_size, n_shards=info.world_size,
                     description=f"{info.world_size} process(es), device {info.device}", device=info.device,
                     local_rank=info.local_rank)


def shutdown():
    distributed.shutdown()


def check_options(config):
    """Every option of the config works in PyTorch."""


def memory_available(dist):
    """(free bytes, where, replicas sharing them) of this process's device: its GPU, or the RAM of its machine."""
    if dist.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dist.device)
        return free, f"GPU {dist.device}", 1
    return host_memory_available(), "this machine's RAM", int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def bf16_support(dist):
    """(whether this process's device runs bf16 at speed, the device in words): a GPU of compute capability >= 8.0,
    a CPU with bf16 instructions."""
    if dist.device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False), f"GPU {dist.device}"
    return bool(cpu_bf16_flags()), "this machine's CPU"


def param_shapes(config):
    """{state_dict name: shape} of the model of a Config (built on the meta device: nothing allocated)."""
    with torch.device("meta"):
        model = Autoencoder(build_architecture(config.model, config.data), config.model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def trainer(config, dist, log=print):
    from efficient_vdvae_torch.trainer import TorchTrainer
    return TorchTrainer(config, dist, log)


def barrier():
    distributed.barrier()


def inference(config, dist, params, log=print):
    from efficient_vdvae_torch.inference import TorchInference
    return TorchInference(config, dist, params, log)


def sample_quality_scorer():
    """fn(inception file) -> fn(real folder, generated folder, splits=, k=) -> report of FID, IS and precision/recall;
    the first call reads the detector, so that a bad file is refused before any image is written."""
    from efficient_vdvae_torch.sample_quality import evaluate_folders, load_detector
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def with_detector(inception):
        load_detector(inception, device)
        return lambda real, fake, **options: evaluate_folders(real, fake, inception, device=device, **options)
    return with_detector

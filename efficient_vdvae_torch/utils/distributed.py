"""Process-group plumbing with a single-process fallback: rank, world size, device, reductions."""
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT_VARIABLE = "VDVAE_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800  # longer than the longest step, evaluation or checkpoint write of one process
LOST_PROCESS_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting", "timed out",
                        "Socket Timeout", "Broken pipe")  # gloo's messages (NCCL's are DistErrors)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self):
        return self.rank == 0


def pick_device(preference, local_rank=0):
    """'auto' -> CUDA device `local_rank` when available, else CPU; 'cuda' fails clearly without GPUs."""
    from efficient_vdvae_core.errors import UserError
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("[run] device = 'cuda' but no CUDA device is visible; set device = 'auto' or 'cpu'")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device_preference="auto"):
    """Join the torchrun process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=collective_timeout(),
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def collective_timeout():
    """How long a collective waits for the other processes: VDVAE_COLLECTIVE_TIMEOUT_S seconds (default 1800)."""
    from efficient_vdvae_core.errors import UserError
    text = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UserError(f"{TIMEOUT_VARIABLE}={text}: must be a number of seconds > 0 (default {DEFAULT_TIMEOUT_S})")
    return timedelta(seconds=seconds)


def is_lost_process(exc):
    """True for the error of a collective whose peer process died (connection closed or reset) or timed out."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in LOST_PROCESS_MARKERS)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor):
    """Sum a tensor over all ranks in place (no-op in a single process); returns it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown():
    """Leave the process group cleanly: a barrier so no rank exits while others still talk, then destroy."""
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()

"""[train] mixed_precision: which hardware runs bf16, and the refusal where it does not.

'bf16' means the same in both frameworks: the networks' convolutions and products take bf16 inputs and
weights (cast from the float32 master weights at each use, so gradients, optimizer state and EMA stay
float32) and make bf16 outputs; the losses, the KL and the MoL log-probabilities are computed in float32.
A CPU runs bf16 at speed only with bf16 instructions (x86 avx512_bf16 or AMX amx_bf16, ARM bf16);
without them the frameworks emulate bf16 slowly, so it is refused.
"""
from efficient_vdvae_core.errors import UserError

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_bf16_flags(cpuinfo="/proc/cpuinfo"):
    """The bf16 instruction-set flags the CPU announces in `cpuinfo` (empty where none or unreadable)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            words = {w for line in f if line.lower().startswith(("flags", "features")) for w in line.split()}
    except OSError:
        return ()
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in words)


def check_precision(config, supported, where):
    """UserError in one line when [train] mixed_precision = 'bf16' and `where` (a device, in words) lacks bf16."""
    if config.train.mixed_precision == "bf16" and not supported:
        raise UserError(f"[train] mixed_precision = 'bf16': {where} has no bf16 support (a CPU needs avx512_bf16 or "
                        "amx_bf16 instructions, a GPU compute capability 8.0 or newer); set mixed_precision = 'none'")

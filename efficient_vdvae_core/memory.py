"""The memory a model needs, estimated from the architecture records before anything is allocated.

Both frameworks build the same convolutions from the records (`efficient_vdvae_core.architecture`), so
they are listed here once, with the resolution each works at: the parameter count is exact (the
frameworks' models have exactly these parameters) and the activations of one training step are
estimated from the tensors every convolution must keep for the backward pass (its input; with
[train] activation_checkpointing, only the block outputs and one block's insides at a time). Training
holds 5 float32 copies of the parameters (weights, gradients, EMA weights, two optimizer moments).

The estimate is a floor (the loss, the latent statistics and the frameworks' workspaces come on top), so
a refused model would not have fitted; a model that passes may still run out of memory.
"""
import math
from dataclasses import dataclass

from efficient_vdvae_core.errors import UserError

FLOAT_BYTES = 4
TRAINING_PARAMETER_COPIES = 5  # weights, gradients, EMA weights, the optimizer's two moments
INFERENCE_PARAMETER_COPIES = 1
GIB = 2 ** 30


@dataclass(frozen=True)
class Conv:
    """One convolution of the model: channels, kernel, and the side of its input and output grids."""
    in_channels: int
    out_channels: int
    kernel: tuple
    in_res: int
    out_res: int

    @property
    def parameters(self):
        return self.in_channels * self.out_channels * math.prod(self.kernel) + self.out_channels

    @property
    def input_elements(self):
        """Input values per image (what the backward pass of the convolution needs)."""
        return self.in_channels * self.in_res ** 2


def _kernel(size):
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def _cell(in_channels, mid, out, kernel, n_layers, use_1x1, res):
    """The convolutions of one residual cell: in -> mid (edge), n_layers x mid -> mid (kernel), mid -> out (edge)."""
    edge = (1, 1) if use_1x1 else _kernel(kernel)
    inner = [Conv(mid, mid, _kernel(kernel), res, res) for _ in range(n_layers)]
    return [Conv(in_channels, mid, edge, res, res), *inner, Conv(mid, out, edge, res, res)]


def model_blocks(arch, use_1x1_conv):
    """(convolutions, other parameters, values per image of the block output) of every block, in order."""
    blocks = [([Conv(arch.input_channels, arch.input_filters, _kernel(arch.input_kernel_size), *(
        [arch.up_levels[0][1].resolution] * 2))], 0, 0)]
    for pre, down in arch.up_levels:
        for b in (*pre, down):
            res, width = b.resolution, b.in_filters
            convs = [c for _ in range(b.n_blocks)
                     for c in _cell(width, int(width * b.mid_ratio), width, b.kernel_size, b.n_layers, use_1x1_conv, res)]
            if b.use_skip:
                convs.append(Conv(width, b.skip_filters, (1, 1), res, res))
            if b.stride > 1:
                convs.append(Conv(width, b.filters, (b.stride, b.stride), res, res // b.stride))
            blocks.append((convs, 0, width * res ** 2))
    top = arch.top_filters * arch.top_resolution ** 2
    blocks.append(([], top, top))
    for d in arch.latent_layers:
        res, width, extra = d.resolution, d.width, 0
        convs = []
        if d.stride > 1:
            convs.append(Conv(d.in_filters, d.filters, (1, 1), res // d.stride, res // d.stride))
            extra = d.filters * res ** 2  # the unpool's scale_bias
        both = width + d.skip_filters
        convs += _cell(both, int(both * d.mid_ratio * 0.5), int(both * 0.5), d.kernel_size, d.n_layers, use_1x1_conv,
                       res)
        convs += _cell(width, int(width * d.mid_ratio), int(width * 2.0), d.kernel_size, d.n_layers, use_1x1_conv, res)
        convs += [Conv(width, 2 * d.latent_variates, (1, 1), res, res) for _ in range(2)]  # prior, posterior stats
        convs.append(Conv(d.latent_variates, d.filters, (1, 1), res, res))
        convs += [c for _ in range(d.n_blocks)
                  for c in _cell(width, int(width * d.mid_ratio), width, d.kernel_size, d.n_layers, use_1x1_conv, res)]
        blocks.append((convs, extra, d.filters * res ** 2))
    last = arch.down_levels[-1][0]
    res = arch.latent_layers[-1].resolution
    blocks.append(([Conv(last.filters, arch.output_channels, _kernel(arch.output_kernel_size), res, res)], 0,
                   arch.output_channels * res ** 2))
    return blocks


def parameter_count(arch, use_1x1_conv):
    """The number of trainable parameters of the model of `arch` (exact)."""
    return sum(sum(c.parameters for c in convs) + extra for convs, extra, _ in model_blocks(arch, use_1x1_conv))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs at least: parameter copies and activations of one step on one replica."""
    parameters: int  # count
    parameter_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self):
        return self.parameter_bytes + self.activation_bytes

    def describe(self):
        count = f"{self.parameters:,}" if self.parameters < 10 ** 12 else f"{self.parameters:.3g}"
        return (f"{gib(self.total_bytes)} ({count} parameters: {gib(self.parameter_bytes)}; "
                f"activations: {gib(self.activation_bytes)})")


def gib(n_bytes):
    """'1.5 GiB', '12.3 MiB' below one GiB, '3.1e+12 GiB' for absurd sizes."""
    if n_bytes >= 1e6 * GIB:
        return f"{n_bytes / GIB:.2g} GiB"
    if n_bytes >= GIB:
        return f"{n_bytes / GIB:,.1f} GiB"
    return f"{n_bytes / 2 ** 20:.1f} MiB"


def training_memory(config, arch, batch_per_replica):
    """MemoryEstimate of one training step with `batch_per_replica` images on one replica."""
    blocks = model_blocks(arch, config.model.use_1x1_conv)
    count = sum(sum(c.parameters for c in convs) + extra for convs, extra, _ in blocks)
    if config.train.activation_checkpointing:
        per_image = sum(out for _, _, out in blocks) + max(sum(c.input_elements for c in convs) for convs, _, _ in blocks)
    else:
        per_image = sum(c.input_elements for convs, _, _ in blocks for c in convs)
    value_bytes = 2 if config.train.mixed_precision == "bf16" else FLOAT_BYTES
    return MemoryEstimate(parameters=count, parameter_bytes=count * FLOAT_BYTES * TRAINING_PARAMETER_COPIES,
                          activation_bytes=per_image * batch_per_replica * value_bytes)


def check_fits_memory(estimate, available, where, copies=1):
    """UserError in one line when `copies` x `estimate` (a MemoryEstimate of one replica) exceed the `available`
    bytes of `where` (None: unknown, nothing checked)."""
    needed = estimate.total_bytes * copies
    if available is None or needed <= available:
        return
    replicas = f" x {copies} replicas on it" if copies > 1 else ""
    raise UserError(f"the model needs at least {estimate.describe()}{replicas} for one training step, more than "
                    f"the {gib(available)} available on {where}; lower [train] batch_size, set [train] "
                    "activation_checkpointing = True, or make the model smaller (filters, latent variates, "
                    "blocks or [data] target_res)")


CGROUP_LIMITS = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def host_memory_available():
    """Bytes of RAM this process can still get: MemAvailable of /proc/meminfo, capped by the container's cgroup
    limit; None where neither can be read (not Linux)."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        found.append(int(fields["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    for limit_file, usage_file in CGROUP_LIMITS:
        try:
            with open(limit_file, encoding="ascii") as f:
                limit = f.read().strip()
            with open(usage_file, encoding="ascii") as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2 ** 60:  # 'max' or a huge number: no limit
            found.append(max(0, int(limit) - usage))
        break
    return min(found) if found else None

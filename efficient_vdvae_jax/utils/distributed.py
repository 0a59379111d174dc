"""Devices, the data-parallel mesh and multi-host plumbing, with a single-process fallback.

Training and evaluation run one `jit` program over a 1-D `Mesh` of every device (axis 'data'): batches
are sharded along their first axis (`batch_sharding`), parameters and optimizer state are replicated
(`replicated`). XLA inserts the gradient all-reduce. With several hosts each process loads its own
contiguous block of every global batch and `global_batch` assembles the global array.

Multi-process: set JAX_COORDINATOR_ADDRESS=host0:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID for every
process (or run under SLURM / Open MPI, which JAX detects), then start `python train.py` once per
process; `init_distributed` calls `jax.distributed.initialize()`.
"""
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
_CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _wants_multihost():
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return any(int(os.environ.get(v, "1") or "1") > 1 for v in _CLUSTER_SIZE_VARS)


def init_distributed():
    """Join the multi-host job when the environment describes one (idempotent); returns the process count.

    On CPU the processes' collectives go through gloo (XLA's CPU collectives), so a job of several CPU
    processes (e.g. a test on one machine) runs the same programs as GPU processes over NCCL.
    """
    if _wants_multihost() and not jax.distributed.is_initialized():
        if os.environ.get("JAX_PLATFORMS", "").split(",")[0] in ("", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        kwargs = {}
        if os.environ.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
        if os.environ.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
        jax.distributed.initialize(**kwargs)
    return jax.process_count()


def is_main():
    return jax.process_index() == 0


def make_mesh(devices=None):
    """A 1-D mesh (axis 'data') over `devices` (default: every device of every host)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh):
    return NamedSharding(mesh, P())


def batch_sharding(mesh):
    return NamedSharding(mesh, P(DATA_AXIS))


def n_devices(mesh):
    return mesh.devices.size


def local_rows(global_batch):
    """The rows [start, stop) of a global batch that this process loads (a contiguous block)."""
    per_process, rem = divmod(global_batch, jax.process_count())
    if rem:
        raise ValueError(f"a global batch of {global_batch} does not split over {jax.process_count()} processes")
    start = jax.process_index() * per_process
    return start, start + per_process


def global_batch(mesh, local):
    """A global jax.Array sharded over 'data' from this process's rows (all rows in one process)."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local)


def put_replicated(mesh, tree):
    """Copy a pytree of host arrays to every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def to_host(x):
    """NumPy copy of a jax.Array: a local replica, or gathered from all hosts when sharded across them."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def sync(name):
    """Wait until every process reaches this point (a no-op in one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def all_reduce_sum(array):
    """Sum a host NumPy array over all processes (the array itself in one process)."""
    if jax.process_count() == 1:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(np.asarray(array))).sum(axis=0)

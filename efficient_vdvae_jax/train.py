"""Train Efficient-VDVAE with JAX: one process per host, data-parallel over every local device."""
import contextlib

from efficient_vdvae_core.cli import build_parser, run_main
from efficient_vdvae_core.config import load_config
from efficient_vdvae_core.runs import RunLock, resolve_run_config, run_paths


def main(args):
    """Lock the run, resolve its config (process 0 writes the saved copy first), build the device mesh, train.

    Process 0 holds `logs-<name>/.lock` until the end, so a second training of the same run in the same
    folder (PyTorch or JAX) is refused before anything is written.
    """
    import jax

    from efficient_vdvae_jax.training import run_training
    from efficient_vdvae_jax.utils import distributed as D

    given, _ = load_config(args.config, args.overrides)
    D.init_distributed()
    quiet = (lambda *a, **k: None)
    lock = RunLock(run_paths(given.run.name, args.workdir).logs) if D.is_main() else contextlib.nullcontext()
    with lock:
        if D.is_main():
            config, paths = resolve_run_config(args.config, args.overrides, args.workdir, mode="train")
        D.sync("saved config")
        if not D.is_main():
            config, paths = resolve_run_config(args.config, args.overrides, args.workdir, mode="train", log=quiet)
        mesh = D.make_mesh()
        if D.is_main():
            print(f"Running on {D.n_devices(mesh)} device(s) ({jax.devices()[0].platform}) in "
                  f"{jax.process_count()} process(es)")
        return run_training(config, paths, mesh=mesh, init_checkpoint=args.from_checkpoint)


def parser():
    p = build_parser(main.__doc__.splitlines()[0])
    p.add_argument("--from-checkpoint", metavar="PATH", default=None,
                   help="start a NEW run from the weights of this checkpoint: one of ours (a checkpoint_<step> "
                        "folder), or a PyTorch .pt file (ours or the original's; needs torch); ignored when the "
                        "run already has checkpoints")
    return p


if __name__ == "__main__":
    from efficient_vdvae_jax.utils import cpu
    cpu.prepare()
    run_main(main, parser=parser())

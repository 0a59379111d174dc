"""Every checkpoint format where the entry points take a checkpoint (`synthesize.py --checkpoint`,
`train.py --from-checkpoint`), in both frameworks: the framework's own checkpoint, a `.npz` of
`python -m efficient_vdvae_jax.convert --to jax`, a `.pt` of `--to torch` (from a JAX Orbax folder),
the original PyTorch code's file and the original JAX code's msgpack file, all holding the same weights,
give the same reconstruction numbers and the same first training step. PyTorch also reads JAX's Orbax folder.
"""
import numpy as np
import pytest

from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.runs import run_paths
from efficient_vdvae_jax import convert
from tests.behaviour.conftest import STEPS, Side, assert_same_state, cli_args, copy_run
from tests.behaviour.test_original_in_place import reconstruct
from tests.original_files import write_original_jax, write_original_torch

SOURCE = STEPS - 1  # the reference checkpoint every input is made from


def write_inputs(framework, reference, folder):
    """{format: path} of one set of weights (the reference's checkpoint of step SOURCE) in every format."""
    native = framework.path(reference.workdir, SOURCE)
    folder.mkdir()
    inputs = {"native": native, "npz": folder / "weights.npz"}
    run_main(convert.main, ["--to", "jax", str(native), str(inputs["npz"])], parser=convert.parser())
    if framework.name == "jax":
        inputs["pt"] = folder / "weights.pt"
        run_main(convert.main, ["--to", "torch", str(native), str(inputs["pt"])], parser=convert.parser())
    weights = framework.weights(native)
    zeros = {n: np.zeros_like(a) for n, a in weights.params.items()}
    inputs["original-pytorch"] = folder / "checkpoints-tiny"
    write_original_torch(inputs["original-pytorch"], weights.params, weights.ema, zeros, zeros, count=SOURCE,
                         global_step=SOURCE - 1, lr=1e-3)
    inputs["original-jax"] = folder / f"checkpoint_{SOURCE}"
    write_original_jax(inputs["original-jax"], weights.params, weights.ema, zeros, zeros, count=SOURCE, step=SOURCE,
                       num_mixtures=3, channels=3)
    return inputs


def run_folder(reference, workdir):
    """A run folder holding only the reference's saved config (the original's files store no config)."""
    return copy_run(Side("torch"), reference.workdir, workdir, steps=())


def test_synthesize_reads_every_format_with_the_same_numbers(framework, reference, tmp_path):
    inputs = write_inputs(framework, reference, tmp_path / "inputs")
    run_folder(reference, tmp_path / "run")
    reports = {kind: reconstruct(framework, tmp_path / "run", "--checkpoint", path) for kind, path in inputs.items()}
    expected = reports["native"]
    for kind, report in reports.items():
        assert report["checkpoint"] == str(inputs[kind]), kind
        assert report["checkpoint_step"] == SOURCE, (kind, report)
        for key in ("nelbo", "ssim"):
            assert report[key] == pytest.approx(expected[key], rel=1e-6), (kind, key)
    if framework.name == "jax":  # PyTorch reads JAX's own folder as it reads the .pt converted from it
        torch = Side("torch")
        on_folder = reconstruct(torch, tmp_path / "run", "--checkpoint", inputs["native"])
        on_pt = reconstruct(torch, tmp_path / "run", "--checkpoint", inputs["pt"])
        assert on_folder["checkpoint_step"] == SOURCE
        assert on_folder["nelbo"] == pytest.approx(on_pt["nelbo"], rel=1e-6)


def test_from_checkpoint_starts_every_format_alike(framework, reference, tmp_path):
    inputs = write_inputs(framework, reference, tmp_path / "inputs")
    del inputs["original-pytorch" if framework.name == "jax" else "original-jax"]  # one original each: time
    states = {}
    for kind, path in inputs.items():
        workdir = tmp_path / f"run-{kind}"
        args = cli_args(workdir, 1) + ["--from-checkpoint", str(path)]
        run_main(framework.train.main, args, parser=framework.train.parser())
        (step, checkpoint), = framework.folder(workdir).list()
        assert step == 1, kind  # a new run from step 0, not a resume at the source's step
        states[kind] = framework.read(checkpoint)
    for kind, state in states.items():  # the same weights in: the same first step out, bit for bit
        assert_same_state(framework, framework.folder(tmp_path / f"run-{kind}").path(1), states["native"])
    assert run_paths("tiny", tmp_path / "run-native").saved_config.is_file()

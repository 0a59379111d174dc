"""The original code's checkpoint files unzipped in place, as its README tells users to do: the PyTorch
original's single file `checkpoints-<name>` and the JAX original's `checkpoints-<name>/checkpoint_<N>`,
beside the zip's `logs-<name>/hparams-<name>.cfg`. With no option naming them, `train.py` resumes from
them (weights, EMA and Adamax moments, at the step the original would resume at) and `synthesize.py`
reads them, in both frameworks, from either framework's original layout.
"""
import re
import shutil

import numpy as np
import pytest

from efficient_vdvae_core.checkpoints import ORIGINAL_FILE
from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.runs import run_paths
from tests.behaviour.conftest import STEPS, cli_args, train_here
from tests.original_files import write_original_jax, write_original_torch

KINDS = ("pytorch", "jax")
SAVED = STEPS - 2  # the reference checkpoint written as the original's file


def unzip_original(framework, reference, workdir, kind):
    """A run folder as the original's zip leaves it: the saved config and one original checkpoint, made from
    the reference run's weights at step SAVED with small Adamax moments. Returns (path, step it resumes at)."""
    weights = framework.weights(framework.path(reference.workdir, SAVED))
    rng = np.random.default_rng(3)
    m = {n: rng.uniform(-1e-3, 1e-3, a.shape).astype(np.float32) for n, a in weights.params.items()}
    u = {n: rng.uniform(1e-3, 1e-2, a.shape).astype(np.float32) for n, a in weights.params.items()}
    source, paths = run_paths("tiny", reference.workdir), run_paths("tiny", workdir)
    paths.logs.mkdir(parents=True)
    shutil.copy(source.saved_config, paths.saved_config)
    if kind == "pytorch":  # the file written after iteration global_step: the next iteration is global_step + 1
        write_original_torch(paths.checkpoints, weights.params, weights.ema, m, u, count=SAVED,
                             global_step=SAVED - 1, lr=1e-3)
        return paths.checkpoints, SAVED
    paths.checkpoints.mkdir()
    path = paths.checkpoints / f"checkpoint_{SAVED}"
    write_original_jax(path, weights.params, weights.ema, m, u, count=SAVED, step=SAVED, num_mixtures=3, channels=3)
    return path, SAVED


@pytest.mark.parametrize("kind", KINDS)
def test_plain_train_resumes_the_original_in_place(framework, reference, kind, tmp_path, capsys):
    original, step = unzip_original(framework, reference, tmp_path, kind)
    before = original.read_bytes()
    capsys.readouterr()
    train_here(framework, tmp_path, STEPS)
    out = capsys.readouterr().out
    (resumed_at,) = re.findall(r"Resumed from the original-format checkpoint \S+ at step (\d+) \(its Adamax moments "
                               r"continue", out)
    assert int(resumed_at) == step, out
    folder = run_paths("tiny", tmp_path).checkpoints
    kept = folder / ORIGINAL_FILE if kind == "pytorch" else original  # the adopted file, moved into the folder
    assert kept.read_bytes() == before  # the original file is kept, unchanged
    ours = [s for s, p in framework.folder(tmp_path).list() if p != kept]
    assert ours == list(range(step + 1, STEPS + 1))  # numbered on from the original's step
    trained = framework.weights(framework.path(tmp_path, STEPS))
    start = framework.weights(framework.path(reference.workdir, SAVED))
    for name, value in trained.params.items():
        assert np.all(np.isfinite(value)), name
    assert any(not np.array_equal(trained.params[n], start.params[n]) for n in start.params)


def reconstruct(framework, workdir, *extra):
    """synthesize.py reconstruction of 4 validation images of the run 'tiny' in `workdir`: its report."""
    args = cli_args(workdir, STEPS, "synthesis.synthesis_mode='reconstruction'", "synthesis.batch_size=4")
    return run_main(framework.synthesize.main, args + ["--max-images", "4", *map(str, extra)],
                    parser=framework.synthesize.parser())


@pytest.mark.parametrize("kind", KINDS)
def test_plain_synthesize_reads_the_original_in_place(framework, reference, kind, tmp_path):
    original, step = unzip_original(framework, reference, tmp_path, kind)
    report = reconstruct(framework, tmp_path)
    assert report["checkpoint"] == str(original) and report["checkpoint_step"] == step, report
    ours = tmp_path / "ours"
    paths = run_paths("tiny", ours)
    paths.logs.mkdir(parents=True)
    shutil.copy(run_paths("tiny", reference.workdir).saved_config, paths.saved_config)
    expected = reconstruct(framework, ours, "--checkpoint", framework.path(reference.workdir, SAVED))
    assert report["checkpoint_step"] == expected["checkpoint_step"]
    for key in ("nelbo", "ssim"):  # the same weights as the run's own checkpoint of that step
        assert report[key] == pytest.approx(expected[key], rel=1e-6), key

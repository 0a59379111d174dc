"""The encoding and decoding modes of both frameworks on tiny runs trained in the test: the posterior statistics
written, decoding back to the posterior-mean reconstruction, pruned encodings, and encodings written by one
framework decoded by the other (the same NumPy files).

The runs, every invocation's result and the kernels run by hand come from `synthesis_fixtures`.
"""
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_core.data import make_dataset
from efficient_vdvae_core.encodings import read_encodings, safe_file_stems
from efficient_vdvae_core.runs import run_paths
from efficient_vdvae_core.training.images import images_to_uint8
from tests.behaviour.synthesis_fixtures import SEED, STEPS
from tests.behaviour.synthesis_fixtures import framework, synthesis_runs  # noqa: F401, F811 (pytest fixtures)
from tests.behaviour.synthesis_worker import file_hashes
from tests.behaviour.test_synthesis_generation import one_line_error
from tests.conftest import egs_config


def png(path):
    return np.asarray(Image.open(path))


def names(paths):
    return [Path(p).name for p in paths]


def test_encoding_then_decoding_reproduces_the_posterior_mean_reconstruction(framework, synthesis_runs):
    work, _, results = synthesis_runs.rgb(framework)
    config, paths = egs_config("tiny"), run_paths("tiny", work)
    folder = paths.latents / f"encodings_seed_{SEED}_test"
    assert results["encode_test"]["result"] == str(folder)
    test_names = make_dataset(config.data, "test", seed=SEED, n_samples=6).names
    enc = read_encodings(folder)
    assert enc.names == test_names and enc.metadata["split"] == "test" and enc.metadata["framework"] == framework
    assert [(s.layer, s.kept_variates) for s in enc.layers] == [(l, tuple(range(8))) for l in range(6)]
    by_hand = results["posterior_decode"]  # the model's pass with eps = 0 (z = posterior means) and the kernels
    for spec in enc.layers:
        layer = spec.layer
        assert enc.means[layer].shape == (6, spec.height, spec.width, 8)
        for stat, written in (("mean", enc.means[layer]), ("std", enc.stds[layer])):
            np.testing.assert_allclose(written, by_hand[f"{stat}_{layer}"], atol=1e-5)
            np.testing.assert_allclose(written, by_hand[f"kernel_{stat}_{layer}"], atol=1e-5)
        assert np.all(np.asarray(enc.stds[layer]) > 0)
    np.testing.assert_allclose(by_hand["decode_logits"], by_hand["forward_logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(by_hand["decoded"], by_hand["reconstruction"], atol=1e-4)

    written = results["decode_test"]["result"]
    out = paths.synthesis_images / "decoded" / folder.name / f"ema-step{STEPS}-T0-out1"
    assert written == [str(out / f"{stem}.png") for stem in safe_file_stems(test_names)]
    for path, image in zip(written, images_to_uint8(by_hand["reconstruction"], config)):
        np.testing.assert_array_equal(png(path), image)
    assert png(written[-1]).shape == (32, 32, 3)
    sampled = results["decode_sampled"]["result"]  # a copy of the folder elsewhere: only NumPy files travel
    assert names(sampled) == names(written[:2])


def test_encoded_std_is_converted_from_logstd(framework, synthesis_runs):
    """distribution_base = 'logstd': the backend's std is exp(beta * logstd) of the model's own pass."""
    _, _, results = synthesis_runs.rgb(framework)
    by_hand = results["logstd"]
    for layer in range(6):
        for stat in ("mean", "std"):
            np.testing.assert_allclose(by_hand[f"kernel_{stat}_{layer}"], by_hand[f"{stat}_{layer}"], rtol=1.3e-6,
                                       atol=1e-5)


def test_pruned_encoding_keeps_the_masked_variates_and_decodes(framework, synthesis_runs):
    work, _, results = synthesis_runs.rgb(framework)
    config, paths = egs_config("tiny"), run_paths("tiny", work)
    folder = paths.latents / f"encodings_seed_{SEED}"
    assert results["encode_pruned"]["result"] == str(folder)
    enc = read_encodings(folder)
    stats = np.load(paths.latents / "div_stats.npy")
    rule = stats > np.quantile(stats, 0.75)
    assert {s.layer: list(s.kept_variates) for s in enc.layers} == {
        l: np.flatnonzero(row).tolist() for l, row in enumerate(rule) if row.any()}
    assert enc.names == make_dataset(config.data, "encode", seed=SEED, n_samples=5).names
    assert enc.metadata["std_note"] and enc.metadata["distribution_base"] == "std"
    written = results["decode_default"]["result"]  # the default folder: the train split's encodings
    assert names(written) == [f"{n}.png" for n in enc.names[:3]]
    assert all(Path(p).parent.parent.name == folder.name for p in written)


def test_encodings_decode_in_the_other_framework(synthesis_runs):
    """PyTorch's encodings decoded by JAX with PyTorch's checkpoint, and JAX's decoded by PyTorch with JAX's
    weights (as an original-format file), read from the other run's folder: the same decode logits, and the
    decoding mode writes every image under its name."""
    torch_work, _, torch_results = synthesis_runs.rgb("torch")
    jax_work, _, jax_results = synthesis_runs.rgb("jax")
    torch_decodes_jax = synthesis_runs.cross()
    np.testing.assert_allclose(jax_results["cross_logits"]["logits"],
                               torch_results["posterior_decode"]["decode_logits"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(torch_decodes_jax["cross_logits"]["logits"],
                               jax_results["posterior_decode"]["decode_logits"], rtol=1e-4, atol=1e-4)
    for decoded, encoder, work in (("jax", "torch", torch_work), ("torch", "jax", jax_work)):
        folder = run_paths("tiny", work).latents / f"encodings_seed_{SEED}_test"
        assert {p.suffix for p in folder.iterdir()} == {".npy", ".json", ".txt"}
        enc = read_encodings(folder)
        assert enc.metadata["framework"] == encoder
        written = (jax_results if decoded == "jax" else torch_decodes_jax)["cross_decode"]["result"]
        assert names(written) == [f"{stem}.png" for stem in safe_file_stems(enc.names)]
        assert png(written[0]).shape == (32, 32, 3)


def test_non_finite_encodings_are_refused_for_decoding_in_one_line(framework, synthesis_runs, tmp_path, capsys):
    """A NaN mean or an infinite std in a copy of the run's encodings: decoding refuses it, naming the file and
    the image, and the run folder stays byte-identical."""
    work, _, _ = synthesis_runs.rgb(framework)
    source = run_paths("tiny", work).latents / f"encodings_seed_{SEED}_test"
    names_in_order = read_encodings(source).names
    for stat, value, what in (("mean", np.nan, "non-finite values (first: nan at image 3"),
                              ("std", np.inf, "non-finite or negative standard deviations (first: inf at image 3")):
        damaged = tmp_path / f"bad_{stat}"
        shutil.copytree(source, damaged)
        array = np.load(damaged / f"layer_2_{stat}.npy", mmap_mode="r+")
        array[3, 0, 0, 1] = value
        array.flush()
        del array
        before = file_hashes(work)
        line = one_line_error(capsys, framework, work, "decoding", extra=["--encodings", damaged])
        assert line == (f"error: {damaged / f'layer_2_{stat}.npy'}: {what}, {names_in_order[3]!r}); the encodings "
                        "are damaged: run the 'encoding' mode again")
        assert file_hashes(work) == before


@contextlib.contextmanager
def read_only(folder):
    """`folder` read-only for this process: its permissions (a user), or an empty read-only tmpfs over it (root)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("root, and no read-only mount can be made here")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_synthesis_into_a_read_only_logs_folder_is_one_line(framework, synthesis_runs, tmp_path, capsys):
    """Generation into a copy of the run whose synthesis-images folder is read-only: one line naming the folder."""
    work, _, _ = synthesis_runs.rgb(framework)
    copy = tmp_path / "work"
    for folder in (run_paths("tiny", work).logs, run_paths("tiny", work).checkpoints):
        shutil.copytree(folder, copy / folder.name, ignore=shutil.ignore_patterns("synthesis-images", "latents"))
    images = run_paths("tiny", copy).synthesis_images
    images.mkdir()
    with read_only(images):
        line = one_line_error(capsys, framework, copy, "generation", "synthesis.temperature_settings=[1.0]")
    assert line.startswith(f"error: {images / 'generated'}: ") and "check the folder's permissions" in line, line
    assert list(images.iterdir()) == []

"""JAX synthesize.py end to end on tiny runs trained in the test: every mode, its files and numbers, and
encodings written by PyTorch decoded by JAX.

The JAX runs are subprocesses that share a persistent compilation cache (tests/jax/subprocess_runs.py,
see there); one subprocess runs a list of synthesize.py invocations through its main.
"""
import json
import shutil
import textwrap

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.data import make_dataset
from efficient_vdvae_core.encodings import read_encodings, safe_file_stems
from efficient_vdvae_core.runs import resolve_run_config
from tests.conftest import EGS
from tests.jax.subprocess_runs import run_python, session_cache, train

SEED = 420  # run.seed of both tiny configs
BATCH = 8  # synthesis batch = validation batch: reconstruction reuses the compiled evaluation
RUN_SETS = [f"synthesis.batch_size={BATCH}", "synthesis.n_generation_batches=1",
            "synthesis.div_stats_subset_ratio=0.005", "synthesis.save_target_in_reconstruction=True"]
QUIET = (lambda *a, **k: None)

SYNTH_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    from efficient_vdvae_core.cli import run_main
    from efficient_vdvae_jax import synthesize

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, np.ndarray):
            return value.tolist()
        return value

    results = [plain(run_main(synthesize.main, args, parser=synthesize.parser())) for args in json.loads(sys.argv[1])]
    print("RESULTS " + json.dumps(results))
""")


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    return session_cache(tmp_path_factory)


def synth_args(workdir, mode, *sets, config="tiny", extra=()):
    args = ["--config", str(EGS / f"{config}.cfg"), "--workdir", str(workdir)]
    for text in [f"synthesis.synthesis_mode={mode}", *sets]:
        args += ["--set", text]
    return args + [str(e) for e in extra]


def synthesize_all(calls, cache):
    """Run synthesize.py's main once per argument list, in one subprocess; returns the modes' results."""
    out = run_python(["-c", SYNTH_SCRIPT, json.dumps(calls)], cache)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULTS ")][-1]
    return json.loads(line[len("RESULTS "):])


def _png(path):
    return np.asarray(Image.open(path))


def _resolve(workdir, config="tiny", *sets):
    return resolve_run_config(EGS / f"{config}.cfg", list(sets), workdir, mode="inference", log=QUIET)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory, compilation_cache):
    """A 2-step JAX run of the tiny config and the results of every synthesis mode on it."""
    workdir = tmp_path_factory.mktemp("jax_tiny")
    train(workdir, compilation_cache, 2, 2, *RUN_SETS)
    keep_all = "synthesis.variate_masks_quantile=1.0"
    settings = "[1, 0.7, ('linear', 0.5, 1.0), [0.2, 0.4, 0.6, 0.8, 1.0]]"
    calls = {
        "recon": synth_args(workdir, "reconstruction", extra=["--max-images", 6]),
        "div_stats": synth_args(workdir, "div_stats"),
        "recon_all_kept": synth_args(workdir, "reconstruction", "synthesis.mask_reconstruction=True", keep_all,
                                     extra=["--max-images", 6]),
        "recon_pruned": synth_args(workdir, "reconstruction", "synthesis.mask_reconstruction=True",
                                   "synthesis.variate_masks_quantile=0.25", extra=["--max-images", 6]),
        "encode_test": synth_args(workdir, "encoding", keep_all, extra=["--split", "test", "--max-images", 6]),
        "decode_test": synth_args(workdir, "decoding", extra=[
            "--encodings", workdir / "logs-tiny" / "latents" / f"encodings_seed_{SEED}_test"]),
        "decode_sampled": synth_args(workdir, "decoding", extra=[
            "--encodings", workdir / "logs-tiny" / "latents" / f"encodings_seed_{SEED}_test", "--sample-temperature",
            0.5, "--max-images", 2]),
        "encode_pruned": synth_args(workdir, "encoding", "synthesis.variate_masks_quantile=0.25",
                                    extra=["--max-images", 5]),
        "generation": synth_args(workdir, "generation", f"synthesis.temperature_settings={settings}"),
    }
    results = synthesize_all(list(calls.values()), compilation_cache)
    return workdir, dict(zip(calls, results))


def test_reconstruction_writes_images_targets_and_metrics(rgb):
    workdir, results = rgb
    report = results["recon"]
    _, paths = _resolve(workdir)
    saved = json.loads((paths.synthesis_images / "reconstruction_metrics.json").read_text())
    assert saved["framework"] == "jax" and saved["masked"] is not None  # the last reconstruction (pruned) wrote it
    assert report["n_images"] == 6 and report["units"] == "bits/dim" and report["masked"] is None
    assert report["nelbo"] == pytest.approx(report["reconstruction_loss"] + report["kl_div"])
    assert 0 < report["kl_div"] < report["nelbo"] < 20 and -1 <= report["ssim"] <= 1
    folder = paths.synthesis_images / "reconstructed"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"image-{i:04d}.png" for i in range(6)] + [f"target-{i:04d}.png" for i in range(6)])
    assert _png(folder / "image-0005.png").shape == (32, 32, 3)
    config, _ = _resolve(workdir)
    target = make_dataset(config.data, "test", seed=SEED, n_samples=6).load(5)
    np.testing.assert_array_equal(_png(folder / "target-0005.png"), np.round(target * 127.5 + 127.5).astype(np.uint8))


def test_masks_keeping_every_variate_change_nothing(rgb):
    _, results = rgb
    full, plain = results["recon_all_kept"], results["recon"]
    assert full["masked"]["kept_variates"] == full["masked"]["total_variates"] == 48
    for key in ("nelbo", "reconstruction_loss", "kl_div", "ssim"):
        assert full[key] == pytest.approx(plain[key], rel=1e-6), key


def test_div_stats_and_pruned_reconstruction(rgb):
    workdir, results = rgb
    _, paths = _resolve(workdir)
    stats = np.load(paths.latents / "div_stats.npy")
    assert stats.dtype == np.float32 and stats.shape == (6, 8)
    np.testing.assert_array_equal(stats, np.asarray(results["div_stats"], np.float32))
    assert np.all(np.isfinite(stats)) and np.all(stats >= 0) and stats.max() > 0
    pruned = results["recon_pruned"]
    rule = stats > np.quantile(stats, 0.75)
    assert pruned["masked"]["kept_variates"] == int(rule.sum()) == pytest.approx(0.25 * 48, abs=1)
    assert pruned["masked"]["kept_per_layer"] == rule.sum(axis=1).tolist()
    assert np.isfinite(pruned["nelbo"]) and pruned["nelbo"] != results["recon"]["nelbo"]


def test_encoding_and_decoding(rgb, tmp_path):
    workdir, results = rgb
    config, paths = _resolve(workdir)
    folder = paths.latents / f"encodings_seed_{SEED}_test"
    assert results["encode_test"] == str(folder)
    enc = read_encodings(folder)
    names = make_dataset(config.data, "test", seed=SEED, n_samples=6).names
    assert enc.names == names and enc.metadata["split"] == "test" and enc.metadata["framework"] == "jax"
    assert [(s.layer, s.kept_variates) for s in enc.layers] == [(l, tuple(range(8))) for l in range(6)]
    for spec in enc.layers:
        assert enc.means[spec.layer].shape == (6, spec.height, spec.width, 8)
        assert np.all(np.asarray(enc.stds[spec.layer]) > 0)
    decoded = [paths.synthesis_images / "decoded" / f"{stem}.png" for stem in safe_file_stems(names)]
    assert results["decode_test"] == [str(p) for p in decoded]
    assert _png(decoded[-1]).shape == (32, 32, 3)
    assert results["decode_sampled"] == [str(p) for p in decoded[:2]]
    rule = np.load(paths.latents / "div_stats.npy")
    rule = rule > np.quantile(rule, 0.75)
    pruned = read_encodings(paths.latents / f"encodings_seed_{SEED}")
    assert {s.layer: list(s.kept_variates) for s in pruned.layers} == {
        l: np.flatnonzero(row).tolist() for l, row in enumerate(rule) if row.any()}
    assert pruned.names == make_dataset(config.data, "encode", seed=SEED, n_samples=5).names


def test_generation_with_every_temperature_format(rgb):
    _, results = rgb
    written = results["generation"]
    assert sorted(written) == ["0", "1", "2", "3"]
    for i, files in written.items():
        assert [p.rsplit("/", 1)[1] for p in files] == [f"setup-{i}-image-{n:04d}.png" for n in range(BATCH)] + [
            f"setup-{i}-grid.png"]
        assert _png(files[0]).shape == (32, 32, 3) and _png(files[-1]).shape == (2 + 3 * 34, 2 + 3 * 34, 3)
    assert not np.array_equal(_png(written["0"][0]), _png(written["0"][1]))


def test_binarized_reconstruction_and_generation(tmp_path, compilation_cache):
    train(tmp_path, compilation_cache, 1, 1, *RUN_SETS, config="tiny_binarized")
    report, written = synthesize_all([
        synth_args(tmp_path, "reconstruction", config="tiny_binarized", extra=["--max-images", 5]),
        synth_args(tmp_path, "generation", "synthesis.temperature_settings=[1.]", config="tiny_binarized")],
        compilation_cache)
    assert report["units"] == "nats/image" and report["n_images"] == 5 and report["ssim"] == 0
    assert report["nelbo"] > 50  # nats per 28x28 image
    _, paths = _resolve(tmp_path, "tiny_binarized")
    image = _png(paths.synthesis_images / "reconstructed" / "image-0004.png")
    assert image.shape == (28, 28) and set(np.unique(image)) <= {0, 255}
    assert _png(paths.synthesis_images / "reconstructed" / "target-0004.png").shape == (28, 28)
    assert len(written) == 1 and _png(written["0"][0]).shape == (28, 28)


def _one_line_error(capsys, workdir, mode, *sets, extra=()):
    from efficient_vdvae_jax import synthesize
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(synthesize.main, synth_args(workdir, mode, *sets, extra=extra), parser=synthesize.parser())
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_missing_inputs_are_one_line_errors(capsys, tmp_path, rgb):
    workdir, _ = rgb
    fresh = tmp_path / "fresh"
    assert "no run named 'tiny'" in _one_line_error(capsys, fresh, "generation")
    resolve_run_config(EGS / "tiny.cfg", [], fresh, mode="train", log=QUIET)
    assert "no checkpoint in" in _one_line_error(capsys, fresh, "generation")
    copy = tmp_path / "copy"
    shutil.copytree(workdir / "logs-tiny", copy / "logs-tiny", ignore=shutil.ignore_patterns("latents"))
    shutil.copytree(workdir / "checkpoints-tiny", copy / "checkpoints-tiny")
    msg = _one_line_error(capsys, copy, "encoding")
    assert "div_stats.npy not found" in msg and "synthesis_mode=div_stats" in msg
    assert "'encoding'" in _one_line_error(capsys, copy, "decoding")


TORCH_DECODE_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from efficient_vdvae_core.encodings import read_encodings
    from efficient_vdvae_core.runs import resolve_run_config
    from efficient_vdvae_jax.inference.codes import decode_logits
    from efficient_vdvae_jax.inference.loading import load_model
    config, paths = resolve_run_config(sys.argv[1], [], sys.argv[2], mode="inference", log=lambda *a: None)
    loaded = load_model(config, paths, checkpoint=sys.argv[3], log=lambda *a: None)
    encodings = read_encodings(sys.argv[4])
    np.save(sys.argv[5], np.asarray(decode_logits(loaded, encodings, 0, len(encodings), 0, config.run.seed)))
""")


def test_torch_encodings_decode_in_jax_like_in_torch(tmp_path, compilation_cache):
    """A PyTorch run's encodings (all variates kept, posterior means) decode to the same logits in JAX,
    with the PyTorch checkpoint converted on the fly; and JAX's decoding mode writes the same files."""
    torch = pytest.importorskip("torch")
    from efficient_vdvae_torch import synthesize as torch_synthesize
    from efficient_vdvae_torch import train as torch_train
    from efficient_vdvae_torch.inference.codes import decode_logits
    from efficient_vdvae_torch.inference.loading import load_model
    from efficient_vdvae_torch.utils.checkpoint import latest_checkpoint
    sets = ["train.total_train_steps=2", "train.checkpoint_and_eval_interval_in_steps=2", "train.batch_size=4",
            "val.n_samples_for_validation=4", "val.batch_size=4", "run.num_cpus=0", "run.device='cpu'",
            f"synthesis.batch_size={BATCH}", "synthesis.div_stats_subset_ratio=0.003",
            "synthesis.variate_masks_quantile=1.0"]
    torch_dir = tmp_path / "torch"
    args = ["--config", str(EGS / "tiny.cfg"), "--workdir", str(torch_dir)] + [a for s in sets for a in ("--set", s)]
    run_main(torch_train.main, args, parser=torch_train.parser())
    for mode, extra in (("div_stats", []), ("encoding", ["--split", "test", "--max-images", "6"])):
        run_main(torch_synthesize.main, args + ["--set", f"synthesis.synthesis_mode={mode}", *extra],
                 parser=torch_synthesize.parser())
    config, paths = _resolve(torch_dir, "tiny")
    folder = paths.latents / f"encodings_seed_{SEED}_test"
    encodings = read_encodings(folder)
    with torch.no_grad():
        expected = decode_logits(load_model(config, paths, log=QUIET), encodings, 0, 6, 0, SEED)
    checkpoint, _ = latest_checkpoint(paths.checkpoints, log=QUIET)

    jax_dir = tmp_path / "jax"  # a JAX run folder with the PyTorch run's saved config
    shutil.copytree(paths.logs, jax_dir / "logs-tiny", ignore=shutil.ignore_patterns("latents", "synthesis-images"))
    run_python(["-c", TORCH_DECODE_SCRIPT, EGS / "tiny.cfg", jax_dir, checkpoint, folder, tmp_path / "jax.npy"],
               compilation_cache)
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), expected.numpy().transpose(0, 2, 3, 1),
                               rtol=1e-4, atol=1e-4)
    (written,) = synthesize_all([synth_args(jax_dir, "decoding", extra=["--encodings", folder, "--checkpoint",
                                                                        checkpoint])], compilation_cache)
    assert [p.rsplit("/", 1)[1] for p in written] == [f"{s}.png" for s in safe_file_stems(encodings.names)]

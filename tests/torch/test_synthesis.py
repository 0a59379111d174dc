"""synthesize.py end to end on tiny runs trained in the test: every mode, its files, and its numbers."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from efficient_vdvae_core.cli import run_main
from efficient_vdvae_core.data import make_dataset
from efficient_vdvae_core.encodings import read_encodings, safe_file_stems
from efficient_vdvae_core.runs import resolve_run_config
from efficient_vdvae_core.schedules import inference_step
from efficient_vdvae_torch import synthesize, train
from efficient_vdvae_torch.evaluation import MetricAccumulator, evaluate_batch, images_to_uint8
from efficient_vdvae_torch.inference.codes import decode_logits, posterior_statistics
from efficient_vdvae_torch.inference.common import output_generator, posterior_noise, zero_noise
from efficient_vdvae_torch.inference.generation import generate_batch
from efficient_vdvae_torch.inference.loading import LoadedModel, load_model
from efficient_vdvae_torch.model.autoencoder import build_model
from efficient_vdvae_torch.model.losses import effective_pixels
from efficient_vdvae_torch.utils.checkpoint import latest_checkpoint
from tests.conftest import EGS

SEED = 420  # run.seed of both tiny configs
BATCH = 4
RUN_SETS = ["train.total_train_steps=4", "train.checkpoint_and_eval_interval_in_steps=4", "train.batch_size=4",
            "val.n_samples_for_validation=4", "val.batch_size=4", "run.num_cpus=0", "run.device='cpu'",
            f"synthesis.batch_size={BATCH}", "synthesis.n_generation_batches=1",
            "synthesis.div_stats_subset_ratio=0.003", "synthesis.save_target_in_reconstruction=True"]
QUIET = (lambda *a, **k: None)


def _args(config, workdir, sets=(), extra=()):
    args = ["--config", str(EGS / f"{config}.cfg"), "--workdir", str(workdir)]
    for text in sets:
        args += ["--set", text]
    return args + [str(e) for e in extra]


def synth(workdir, mode, *sets, config="tiny", extra=()):
    """Run synthesize.py's main; returns what the mode returns."""
    args = _args(config, workdir, [f"synthesis.synthesis_mode={mode}", *sets], extra)
    return run_main(synthesize.main, args, parser=synthesize.parser())


def _train(tmp_path_factory, config):
    workdir = tmp_path_factory.mktemp(config)
    run_main(train.main, _args(config, workdir, RUN_SETS), parser=train.parser())
    return workdir


def _resolve(workdir, config="tiny", *sets):
    return resolve_run_config(EGS / f"{config}.cfg", list(sets), workdir, mode="inference", log=QUIET)


def _png(path):
    return np.asarray(Image.open(path))


def _test_images(config, n):
    ds = make_dataset(config.data, "test", seed=config.run.seed, n_samples=n)
    return torch.from_numpy(np.stack([ds.load(i) for i in range(n)]).transpose(0, 3, 1, 2)), ds.names


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from threads, and they crawl when other processes share the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    return _train(tmp_path_factory, "tiny")


@pytest.fixture(scope="module")
def bin_run(tmp_path_factory):
    return _train(tmp_path_factory, "tiny_binarized")


@pytest.fixture(scope="module")
def recon_report(rgb_run):
    return synth(rgb_run, "reconstruction", extra=["--max-images", 6])


@pytest.fixture(scope="module")
def div_stats(rgb_run):
    return synth(rgb_run, "div_stats")


def test_reconstruction_writes_images_targets_and_metrics(rgb_run, recon_report):
    _, paths = _resolve(rgb_run)
    saved = json.loads((paths.synthesis_images / "reconstruction_metrics.json").read_text())
    assert saved == json.loads(json.dumps(recon_report))
    assert recon_report["n_images"] == 6 and recon_report["units"] == "bits/dim" and recon_report["masked"] is None
    assert recon_report["nelbo"] == pytest.approx(recon_report["reconstruction_loss"] + recon_report["kl_div"])
    assert 0 < recon_report["kl_div"] < recon_report["nelbo"] < 20 and -1 <= recon_report["ssim"] <= 1
    folder = paths.synthesis_images / "reconstructed"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"image-{i:04d}.png" for i in range(6)] + [f"target-{i:04d}.png" for i in range(6)])
    assert _png(folder / "image-0005.png").shape == (32, 32, 3)


def test_reconstruction_nelbo_equals_training_evaluation(rgb_run, recon_report):
    """Same EMA weights, images, noise and generator through evaluate_batch: the same numbers and PNGs."""
    config, paths = _resolve(rgb_run)
    _, state = latest_checkpoint(paths.checkpoints, log=QUIET)
    model = build_model(config).eval()
    model.load_state_dict(state["ema_model_state_dict"])
    images, _ = _test_images(config, 6)
    acc = MetricAccumulator(binarized=False, effective_pixels=effective_pixels(config.data), n_layers=6)
    for index, batch in enumerate(images.split(BATCH)):  # 4 + 2: the last partial batch counts
        result = evaluate_batch(model, batch, config, step=inference_step(config.loss),
                                noise=posterior_noise(model.arch, len(batch), SEED, index, torch.device("cpu")),
                                generator=output_generator(SEED, index, torch.device("cpu")))
        acc.add(result)
        if index == 0:
            expected_png = images_to_uint8(result.samples, config)[0]
    metrics = acc.result(config.metrics.latent_active_threshold)
    for key in ("nelbo", "reconstruction_loss", "kl_div", "ssim"):
        assert recon_report[key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-9), key
    np.testing.assert_array_equal(_png(paths.synthesis_images / "reconstructed" / "image-0000.png"), expected_png)


def test_original_format_checkpoint_gives_the_same_reconstruction(rgb_run, recon_report, tmp_path):
    _, paths = _resolve(rgb_run)
    _, state = latest_checkpoint(paths.checkpoints, log=QUIET)
    original = tmp_path / "checkpoints-tiny"  # the original's single checkpoint file
    torch.save({"global_step": state["step"] - 1, "model_state_dict": state["model_state_dict"],
                "ema_model_state_dict": state["ema_model_state_dict"]}, original)
    report = synth(rgb_run, "reconstruction", extra=["--max-images", 6, "--checkpoint", original])
    assert report["checkpoint"] == str(original) and report["checkpoint_step"] == recon_report["checkpoint_step"]
    assert report["nelbo"] == recon_report["nelbo"] and report["ssim"] == recon_report["ssim"]


def test_div_stats_file(rgb_run, div_stats):
    _, paths = _resolve(rgb_run)
    saved = np.load(paths.latents / "div_stats.npy")
    assert saved.dtype == np.float32 and saved.shape == (6, 8)
    np.testing.assert_array_equal(saved, div_stats)
    assert np.all(np.isfinite(saved)) and np.all(saved >= 0) and saved.max() > 0


def test_div_stats_is_the_exact_mean_over_images(rgb_run):
    """Batches of 4 + 2 images: the partial batch weighs 2 images, not 4 (the original's bias)."""
    from efficient_vdvae_torch.inference.data import eval_loader
    from efficient_vdvae_torch.inference.div_stats import compute_div_stats, kl_per_variate_sums
    config, paths = _resolve(rgb_run)
    loaded = load_model(config, paths, log=QUIET)
    loader = eval_loader(config, "div_stats", BATCH, max_images=6, subset_ratio=0.01)
    stats = compute_div_stats(loaded, loader, SEED)
    sums = sum(kl_per_variate_sums(loaded, batch, i, SEED) for i, batch in enumerate(loader))
    np.testing.assert_allclose(stats, (sums / (6 * np.log(2))).numpy(), rtol=1e-6)


def test_masked_reconstruction(rgb_run, recon_report, div_stats):
    full = synth(rgb_run, "reconstruction", "synthesis.mask_reconstruction=True",
                 "synthesis.variate_masks_quantile=1.0", extra=["--max-images", 6])
    assert full["masked"]["kept_variates"] == full["masked"]["total_variates"] == 48
    for key in ("nelbo", "reconstruction_loss", "kl_div", "ssim"):
        assert full[key] == recon_report[key], key
    pruned = synth(rgb_run, "reconstruction", "synthesis.mask_reconstruction=True",
                   "synthesis.variate_masks_quantile=0.25", extra=["--max-images", 6])
    rule = div_stats > np.quantile(div_stats, 0.75)
    assert pruned["masked"]["kept_variates"] == int(rule.sum()) == pytest.approx(0.25 * 48, abs=1)
    assert pruned["masked"]["kept_per_layer"] == rule.sum(axis=1).tolist()
    assert np.isfinite(pruned["nelbo"]) and pruned["nelbo"] != recon_report["nelbo"]


def test_encoding_then_decoding_reproduces_posterior_mean_reconstruction(rgb_run, div_stats, tmp_path):
    keep_all = "synthesis.variate_masks_quantile=1.0"
    config, paths = _resolve(rgb_run)
    folder = synth(rgb_run, "encoding", keep_all, extra=["--split", "test", "--max-images", 6])
    assert folder == paths.latents / f"encodings_seed_{SEED}_test"
    images, names = _test_images(config, 6)
    enc = read_encodings(folder)
    assert enc.names == names and enc.metadata["split"] == "test"
    assert [(s.layer, s.kept_variates) for s in enc.layers] == [(l, tuple(range(8))) for l in range(6)]

    loaded = load_model(config, paths, log=QUIET)
    logits, stats = posterior_statistics(loaded, images, None, 0, SEED)  # z = posterior means, no masks
    for block, (mean, std) in zip(loaded.arch.latent_layers, stats):
        assert enc.means[block.layer].shape == (6, block.resolution, block.resolution, 8)
        np.testing.assert_allclose(enc.means[block.layer], mean.permute(0, 2, 3, 1).numpy(), atol=1e-5)
        np.testing.assert_allclose(enc.stds[block.layer], std.permute(0, 2, 3, 1).numpy(), atol=1e-5)
        assert np.all(np.asarray(enc.stds[block.layer]) > 0)
    torch.testing.assert_close(decode_logits(loaded, enc, 0, 6, 0, SEED), logits, atol=1e-4, rtol=1e-4)

    written = synth(rgb_run, "decoding", keep_all, extra=["--encodings", folder])
    assert [p.name for p in written] == [f"{stem}.png" for stem in safe_file_stems(names)]
    assert all(p.parent == paths.synthesis_images / "decoded" for p in written)
    assert _png(written[-1]).shape == (32, 32, 3)
    elsewhere = shutil.copytree(folder, tmp_path / "copied_encodings")  # only NumPy files travel
    sampled = synth(rgb_run, "decoding", extra=["--encodings", elsewhere, "--sample-temperature", 0.5,
                                                "--max-images", 2])
    assert [p.name for p in sampled] == [p.name for p in written[:2]]


def test_encoded_std_is_converted_from_logstd(tiny_config):
    config = tiny_config.replace(model=dataclasses.replace(tiny_config.model, distribution_base="logstd"))
    torch.manual_seed(0)
    model = build_model(config).eval()
    loaded = LoadedModel(model=model, config=config, arch=model.arch, device=torch.device("cpu"),
                         checkpoint=None, step=0, weights="raw")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    _, stats = posterior_statistics(loaded, images, None, 0, SEED)
    _, posteriors, _ = model(images, None, zero_noise(model.arch, 2, torch.device("cpu")))
    for (mean, std), (post_mean, logstd) in zip(stats, posteriors):
        torch.testing.assert_close(mean, post_mean)
        torch.testing.assert_close(std, torch.exp(config.model.gradient_smoothing_beta * logstd))


def test_pruned_encoding_keeps_the_masked_variates_and_decodes(rgb_run, div_stats):
    config, paths = _resolve(rgb_run)
    folder = synth(rgb_run, "encoding", "synthesis.variate_masks_quantile=0.25", extra=["--max-images", 5])
    assert folder == paths.latents / f"encodings_seed_{SEED}"
    enc = read_encodings(folder)
    rule = div_stats > np.quantile(div_stats, 0.75)
    assert {s.layer: list(s.kept_variates) for s in enc.layers} == {
        l: np.flatnonzero(row).tolist() for l, row in enumerate(rule) if row.any()}
    assert enc.names == make_dataset(config.data, "encode", seed=SEED, n_samples=5).names
    assert enc.metadata["std_note"] and enc.metadata["distribution_base"] == "std"
    written = synth(rgb_run, "decoding", extra=["--max-images", 3])  # the default folder
    assert [p.name for p in written] == [f"{n}.png" for n in enc.names[:3]]


def test_generation_with_every_temperature_format(rgb_run):
    settings = "[1, 0.7, ('linear', 0.5, 1.0), [0.2, 0.4, 0.6, 0.8, 1.0]]"
    written = synth(rgb_run, "generation", f"synthesis.temperature_settings={settings}")
    assert sorted(written) == [0, 1, 2, 3]
    for i, files in written.items():
        assert [p.name for p in files] == [f"setup-{i}-image-{n:04d}.png" for n in range(BATCH)] + [f"setup-{i}-grid.png"]
        assert _png(files[0]).shape == (32, 32, 3) and _png(files[-1]).shape == (2 + 2 * 34, 2 + 2 * 34, 3)
    config, paths = _resolve(rgb_run)
    loaded = load_model(config, paths, log=QUIET)
    first, _ = generate_batch(loaded, [0.5] * 6, 2, index=0, seed=SEED)
    again, _ = generate_batch(loaded, [0.5] * 6, 2, index=0, seed=SEED)
    other, _ = generate_batch(loaded, [0.5] * 6, 2, index=1, seed=SEED)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= -1 and first.max() <= 1


def test_binarized_reconstruction_and_generation(bin_run):
    report = synth(bin_run, "reconstruction", config="tiny_binarized", extra=["--max-images", 5])
    assert report["units"] == "nats/image" and report["n_images"] == 5 and report["ssim"] == 0
    assert report["nelbo"] > 50  # nats per 28x28 image
    _, paths = _resolve(bin_run, "tiny_binarized")
    image = _png(paths.synthesis_images / "reconstructed" / "image-0004.png")
    assert image.shape == (28, 28) and set(np.unique(image)) <= {0, 255}
    assert _png(paths.synthesis_images / "reconstructed" / "target-0004.png").shape == (28, 28)
    written = synth(bin_run, "generation", "synthesis.temperature_settings=[1., ('linear', 0.5, 1.0)]",
                    config="tiny_binarized")
    assert len(written) == 2 and _png(written[1][0]).shape == (28, 28)


def _one_line_error(capsys, workdir, mode, *sets, config="tiny", extra=()):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        synth(workdir, mode, *sets, config=config, extra=extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_missing_inputs_are_one_line_errors(capsys, bin_run, tmp_path):
    msg = _one_line_error(capsys, bin_run, "encoding", config="tiny_binarized")
    assert "div_stats.npy not found" in msg and "synthesis_mode=div_stats" in msg
    msg = _one_line_error(capsys, bin_run, "reconstruction", "synthesis.mask_reconstruction=True",
                          config="tiny_binarized")
    assert "div_stats" in msg
    msg = _one_line_error(capsys, bin_run, "decoding", config="tiny_binarized")
    assert "'encoding'" in msg
    assert "no run named 'tiny'" in _one_line_error(capsys, tmp_path, "generation")
    resolve_run_config(EGS / "tiny.cfg", [], tmp_path, mode="train", log=QUIET)
    assert "no checkpoint in" in _one_line_error(capsys, tmp_path, "generation")


def test_checkpoint_of_another_config_is_refused(capsys, rgb_run, bin_run):
    _, bin_paths = _resolve(bin_run, "tiny_binarized")
    path, _ = latest_checkpoint(bin_paths.checkpoints, log=QUIET)
    msg = _one_line_error(capsys, rgb_run, "generation", extra=["--checkpoint", path])
    assert "trained for other data" in msg and "channels = 1" in msg

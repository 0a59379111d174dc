"""The training objective (`vae_objective`: MoL/Bernoulli + KL, gamma balancing, masks, beta schedule) and
the units it reports, vs an independent NumPy reference."""
import math

import numpy as np
import pytest
import torch

from efficient_vdvae_torch.model import losses
from tests import numpy_reference as ref
from tests.conftest import at_step
from tests.torch.test_losses import BETA_LN2, egs_config, load_vectors, with_values


@pytest.fixture(scope="module")
def cifar_cfg():
    """cifar10_baseline with the schedule values these tests assume pinned."""
    return with_values(egs_config("cifar10_baseline"), loss__variation_schedule="Linear",
                       loss__vae_beta_anneal_start=21, loss__vae_beta_anneal_steps=5000, loss__vae_beta_min=1e-4,
                       loss__use_gamma_schedule=True, loss__gamma_max_steps=10000, loss__scaled_gamma=True, model__distribution_base="std",
                       model__gradient_smoothing_beta=BETA_LN2, model__output_distribution_base="std",
                       model__output_gradient_smoothing_beta=BETA_LN2, loss__min_mol_logscale=-250.0)


def random_stats(seed, shapes, base="std"):
    """Posterior and prior stats lists for latent layers of the given (B, V, H, W) shapes."""
    gen = torch.Generator().manual_seed(seed)
    posts, priors = [], []
    for shape in shapes:
        p_mean, q_mean, p_s, q_s = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(4))
        if base == "std":
            p_s, q_s = p_s.exp(), q_s.exp()
        posts.append([p_mean.requires_grad_(), p_s.requires_grad_()])
        priors.append([q_mean.requires_grad_(), q_s.requires_grad_()])
    return posts, priors


def numpy_kls(posts, priors, base="std"):
    return [ref.gaussian_kl(*(t.detach().numpy() for t in (*p, *q)), distribution_base=base, beta=BETA_LN2)
            for p, q in zip(posts, priors)]


def test_objective_mol_and_kl_vectors(cifar_cfg):
    data, config = load_vectors("mol_8bit_std")
    kl_data, _ = load_vectors("kl_std")
    cfg = with_values(cifar_cfg, data__target_res=8, model__num_output_mixtures=3, loss__variation_schedule="None",
                      loss__use_gamma_schedule=False)
    post = [torch.tensor(kl_data["p_mean_nchw"]), torch.tensor(kl_data["p_std_nchw"])]
    prior = [torch.tensor(kl_data["q_mean_nchw"]), torch.tensor(kl_data["q_std_nchw"])]
    small = [t[:, :, :2, :2] for t in post], [t[:, :, :2, :2] for t in prior]
    out = losses.vae_objective(torch.tensor(data["logits_nchw"]), torch.tensor(data["targets_nchw"]),
                               [post, small[0]], [prior, small[1]], cfg, **at_step(0, cfg), batch_size=4)
    kl_small = losses.gaussian_kl(small[0], small[1], distribution_base="std", beta=BETA_LN2).sum().item()
    kl_full = kl_data["loss"] * 4 * 3072  # total nats of the KL file
    assert out.effective_pixels == 192 and not out.binarized and out.beta == 1.0 and out.gamma_weights is None
    np.testing.assert_allclose(out.recon_nats_per_dim.item(), data["loss"], rtol=1e-5)
    np.testing.assert_allclose(out.kl_per_layer_nats_per_dim.numpy(), [kl_full / 768, kl_small / 768], rtol=1e-5)
    np.testing.assert_allclose(out.kl_per_layer_bits_per_latent[0].item(), kl_data["avg_bits"], rtol=1e-5)
    np.testing.assert_allclose(out.kl_per_layer_bits_per_latent[1].item(), kl_small / (4 * 32 * math.log(2)), rtol=1e-5)
    np.testing.assert_allclose(out.loss.item(), data["loss"] + (kl_full + kl_small) / 768, rtol=1e-5)
    np.testing.assert_allclose(out.recon_per_example_nats.numpy(), data["per_example_nll_nats"], rtol=1e-5)
    np.testing.assert_allclose(out.kl_per_example_nats.numpy(),
                               kl_data["per_example_kl_nats"] + np.array([kl.sum().item() for kl in losses.gaussian_kl(
                                   small[0], small[1], distribution_base="std", beta=BETA_LN2)]), rtol=1e-5)
    report = losses.report_units(out)
    assert report.units == "bits/dim"
    np.testing.assert_allclose(report.recon.item(), data["avg_bits_per_dim"], rtol=1e-5)
    np.testing.assert_allclose(report.kl.item(), out.kl_nats_per_dim.item() / math.log(2), rtol=1e-6)
    np.testing.assert_allclose(report.nelbo.item(), report.recon.item() + report.kl.item(), rtol=1e-6)
    np.testing.assert_allclose(report.nelbo_per_example.mean().item(), report.nelbo.item(), rtol=1e-5)


def test_objective_binarized_reports_nats_per_image():
    data, _ = load_vectors("bernoulli")
    cfg = with_values(egs_config("binarized_mnist_baseline"), loss__variation_schedule="None",
                      model__distribution_base="std", model__gradient_smoothing_beta=BETA_LN2)
    posts, priors = random_stats(1, [(4, 3, 2, 2)])
    logits, targets = torch.tensor(data["logits_nchw"]), torch.tensor(data["targets_nchw"])
    out = losses.vae_objective(logits.double(), targets.double(), posts, priors, cfg, **at_step(10 ** 6, cfg), batch_size=4)
    assert out.binarized and out.effective_pixels == 784 and out.gamma_weights is None
    np.testing.assert_allclose(out.recon_nats_per_dim.item(), data["loss_f64"], rtol=1e-12)
    report = losses.report_units(out)
    assert report.units == "nats/image"
    np.testing.assert_allclose(report.recon.item(), data["avg_nats_per_image"], rtol=1e-5)
    kl_nats = sum(kl.sum() for kl in numpy_kls(posts, priors))
    np.testing.assert_allclose(report.kl.item(), kl_nats / 4, rtol=1e-10)
    np.testing.assert_allclose(report.nelbo.item(), data["avg_nats_per_image"] + kl_nats / 4, rtol=1e-5)
    np.testing.assert_allclose(report.nelbo_per_example.numpy(),
                               out.recon_per_example_nats.numpy() + out.kl_per_example_nats.numpy(), rtol=1e-12)


def objective_inputs(cfg, seed=0, shapes=((2, 4, 1, 1), (2, 4, 2, 2), (2, 4, 4, 4))):
    """Random MoL logits/targets at cfg's resolution and random stats for latent layers."""
    rng = np.random.default_rng(seed)
    res, m = cfg.data.target_res, cfg.model.num_output_mixtures
    logits = torch.tensor(rng.normal(0, 1, (2, m * 10, res, res)))
    targets = torch.tensor((rng.integers(0, 256, (2, 3, res, res)) - 127.5) / 127.5)
    posts, priors = random_stats(seed, shapes)
    return logits, targets, posts, priors


@pytest.mark.parametrize("scaled", [True, False])
def test_objective_gamma_balancing(cifar_cfg, scaled):
    cfg = with_values(cifar_cfg, data__target_res=4, model__num_output_mixtures=2, loss__scaled_gamma=scaled)
    logits, targets, posts, priors = objective_inputs(cfg)
    step = 2521
    out = losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(step, cfg), batch_size=2)
    weights = out.gamma_weights
    assert weights is not None and not weights.requires_grad
    assert weights.sum().item() == pytest.approx(3.0, rel=1e-12)
    beta = 2500 / 5021
    assert out.beta == pytest.approx(beta, rel=1e-12)
    pixel_nll = losses.mol_nll(logits, targets, num_bits=8., num_mixtures=2, distribution_base="std", beta=BETA_LN2,
                               min_log_scale=-250.).numpy()
    expected, per_dim, per_latent, ref_weights = ref.vae_loss(
        pixel_nll, numpy_kls(posts, priors), batch_size=2, effective_pixels=48, beta=beta,
        gamma="scaled" if scaled else "unscaled")
    np.testing.assert_allclose(out.loss.item(), expected, rtol=1e-12)
    np.testing.assert_allclose(weights.numpy(), ref_weights, rtol=1e-12)
    np.testing.assert_allclose(out.kl_per_layer_nats_per_dim.numpy(), per_dim, rtol=1e-12)
    np.testing.assert_allclose(out.kl_per_layer_bits_per_latent.numpy(), per_latent / math.log(2), rtol=1e-12)
    np.testing.assert_allclose(out.kl_nats_per_dim.item(), per_dim.sum(), rtol=1e-12)  # true KL, not weighted
    np.testing.assert_allclose(out.kl_loss_nats_per_dim.item(), np.sum(ref_weights * per_dim), rtol=1e-12)

    # Gradients treat the weights as constants.
    out.loss.backward()
    grads = [p[0].grad.clone() for p in posts]
    for p in posts:
        p[0].grad = None
    kls = [losses.gaussian_kl(p, q, distribution_base="std", beta=BETA_LN2).sum() / 96 for p, q in zip(posts, priors)]
    (beta * sum(w * kl for w, kl in zip(weights.tolist(), kls))).backward()
    for grad, p in zip(grads, posts):
        torch.testing.assert_close(grad, p[0].grad, rtol=1e-12, atol=1e-15)


def test_objective_gamma_stats_reduce_makes_shards_match_the_full_batch(cifar_cfg):
    cfg = with_values(cifar_cfg, data__target_res=4, model__num_output_mixtures=2)
    logits, targets, posts, priors = objective_inputs(cfg, seed=4, shapes=((4, 4, 1, 1), (4, 4, 2, 2)))
    logits, targets = logits.repeat(2, 1, 1, 1), targets.repeat(2, 1, 1, 1)
    full = losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(5, cfg), batch_size=4)
    full.loss.backward()
    full_grads = [p[0].grad.clone() for p in posts]
    global_stats = torch.stack([full.kl_per_layer_nats_per_dim, full.kl_per_layer_bits_per_latent * losses.LN2])
    shard_grads = []
    for shard in (slice(0, 2), slice(2, 4)):
        for p in posts:
            p[0].grad = None
        cut = [[t[shard] for t in stats] for stats in posts], [[t[shard] for t in stats] for stats in priors]
        out = losses.vae_objective(logits[shard], targets[shard], *cut, cfg, **at_step(5, cfg), batch_size=2,
                                   gamma_stats_reduce=lambda local: global_stats)
        torch.testing.assert_close(out.gamma_weights, full.gamma_weights)
        out.loss.backward()
        shard_grads.append([p[0].grad.clone() for p in posts])
    for layer, grad in enumerate(full_grads):  # DDP averages the shards' gradients
        torch.testing.assert_close((shard_grads[0][layer] + shard_grads[1][layer]) / 2, grad, rtol=1e-12, atol=1e-15)


def test_objective_gamma_off_and_beta_schedule(cifar_cfg):
    cfg = with_values(cifar_cfg, data__target_res=4, model__num_output_mixtures=2)
    logits, targets, posts, priors = objective_inputs(cfg, seed=3)
    for step, beta in [(0, 1e-4), (10001, 1.0), (5041, 5020 / 5021)]:
        out = losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(step, cfg), batch_size=2)
        assert out.beta == pytest.approx(beta, rel=1e-12)
        assert (out.gamma_weights is None) == (step > 10000)
        kl_term = out.kl_loss_nats_per_dim if step <= 10000 else out.kl_nats_per_dim
        assert out.loss.item() == pytest.approx(out.recon_nats_per_dim.item() + beta * kl_term.item(), rel=1e-12)


def test_objective_masks_drop_kl_of_masked_variates(cifar_cfg):
    cfg = with_values(cifar_cfg, data__target_res=4, model__num_output_mixtures=2, loss__use_gamma_schedule=False)
    logits, targets, posts, priors = objective_inputs(cfg, seed=5)
    masks = [torch.tensor([1., 0., 1., 0.], dtype=torch.float64), None, torch.tensor([True, True, False, False])]
    out = losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(10 ** 6, cfg), batch_size=2, variate_masks=masks)
    np_masks = [[1, 0, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    kls = numpy_kls(posts, priors)
    _, per_dim, per_latent, _ = ref.vae_loss(np.zeros(1), kls, batch_size=2, effective_pixels=48, beta=1.0,
                                             masks=np_masks)
    np.testing.assert_allclose(out.kl_per_layer_nats_per_dim.numpy(), per_dim, rtol=1e-12)
    np.testing.assert_allclose(out.kl_per_layer_bits_per_latent.numpy(), per_latent / math.log(2), rtol=1e-12)
    np.testing.assert_allclose(out.kl_per_example_nats.numpy(),
                               sum((kl * np.array(mk)[None, :, None, None]).sum(axis=(1, 2, 3))
                                   for kl, mk in zip(kls, np_masks)), rtol=1e-12)
    out.loss.backward()
    assert torch.all(posts[0][0].grad[:, [1, 3]] == 0) and torch.all(posts[0][0].grad[:, [0, 2]] != 0)
    assert torch.all(posts[2][0].grad[:, 2:] == 0)
    unmasked = losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(10 ** 6, cfg), batch_size=2)
    assert unmasked.kl_nats_per_dim > out.kl_nats_per_dim


def test_objective_argument_errors(cifar_cfg):
    cfg = with_values(cifar_cfg, data__target_res=4, model__num_output_mixtures=2)
    logits, targets, posts, priors = objective_inputs(cfg)
    with pytest.raises(ValueError, match="variate_masks"):
        losses.vae_objective(logits, targets, posts, priors, cfg, **at_step(0, cfg), batch_size=2, variate_masks=[None])
    with pytest.raises(ValueError, match="posterior"):
        losses.vae_objective(logits, targets, posts, priors[:2], cfg, **at_step(0, cfg), batch_size=2)
    with pytest.raises(ValueError, match="target_res"):
        losses.vae_objective(logits, targets, posts, priors, with_values(cfg, data__target_res=8), **at_step(0, cfg), batch_size=2)


def test_gamma_weights_edge_cases():
    zero = torch.zeros(3)
    torch.testing.assert_close(losses.gamma_weights(zero, zero, scaled=True), torch.ones(3))
    per_dim = [torch.tensor(1.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)]
    weights = losses.gamma_weights(per_dim, [torch.tensor(2.0), torch.tensor(2.0)], scaled=False)
    torch.testing.assert_close(weights, torch.tensor([0.5, 1.5]))
    assert not weights.requires_grad


def test_units_helpers():
    assert losses.nats_per_dim_to_report(math.log(2), binarized=False, effective_pixels=3072) == pytest.approx(1.0)
    assert losses.nats_per_dim_to_report(0.1, binarized=True, effective_pixels=784) == pytest.approx(78.4)
    assert losses.report_unit_name(True) == "nats/image" and losses.report_unit_name(False) == "bits/dim"
    assert losses.pixel_range(8) == (-1.0, 1.0)
    assert losses.num_classes(5.) == 31.0

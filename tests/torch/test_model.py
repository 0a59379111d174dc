"""The PyTorch model: state_dict names/shapes and parameter counts vs the original, init, forward/backward."""
import math

import pytest
import torch

from efficient_vdvae_core.architecture import build_architecture
from efficient_vdvae_core.config import load_config
from efficient_vdvae_torch.model.autoencoder import Autoencoder, build_model
from efficient_vdvae_core.summary import shape_text
from tests.conftest import EGS


def _reference_counts(reference_dir):
    rows = {}
    for line in (reference_dir / "param_counts.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, _, params, tensors = [x.strip() for x in line.split("|")]
            rows[name] = (int(params), int(tensors))
    return rows


def _meta_model(name):
    config, _ = load_config(EGS / f"{name}.cfg")
    with torch.device("meta"):
        return build_model(config)


def test_parameter_counts_of_every_egs_config(reference_dir):
    counts = _reference_counts(reference_dir)
    assert len(counts) == 20
    for name, (n_params, n_tensors) in counts.items():
        params = list(_meta_model(name).parameters())
        assert (sum(p.numel() for p in params), len(params)) == (n_params, n_tensors), name


@pytest.mark.parametrize("name", ["cifar10_baseline", "binarized_mnist_baseline"])
def test_state_dict_listing_equals_reference(reference_dir, name):
    ref = [line for line in (reference_dir / f"torch_state_dict_{name}.txt").read_text().splitlines()
           if line and not line.startswith("#")]
    listing = [f"{k} {shape_text(tuple(v.shape))}" for k, v in _meta_model(name).state_dict().items()]
    assert listing == ref


def test_summary_command_prints_parameter_count(capsys):
    from efficient_vdvae_core.cli import run_main
    from efficient_vdvae_torch.summary import main, parser
    run_main(main, ["--config", str(EGS / "cifar10_baseline.cfg")], parser=parser())
    assert capsys.readouterr().out.strip().splitlines()[-1] == "trainable parameters: 56598692"


def test_forward_backward_tiny(tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config)
    arch = model.arch
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    logits, posts, priors = model(x)
    assert logits.shape == (4, arch.output_channels, 32, 32)
    assert len(posts) == len(priors) == arch.n_latent_layers
    for block, post, prior in zip(arch.latent_layers, posts, priors):
        shape = (4, block.latent_variates, block.resolution, block.resolution)
        assert post[0].shape == post[1].shape == prior[0].shape == shape
        assert (post[1] > 0).all()  # 'std' base
    loss = logits.square().mean() + sum(p[0].square().mean() + q[1].mean() for p, q in zip(posts, priors))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_forward_binarized_and_prior_sampling(tiny_binarized_config):
    model = build_model(tiny_binarized_config)
    x = torch.bernoulli(torch.full((2, 1, 32, 32), 0.3))
    logits, _, _ = model(x)
    assert logits.shape == (2, 1, 32, 32)
    out, zs = model.sample(3, [0.5] * model.arch.n_latent_layers)
    assert out.shape == (3, 1, 32, 32) and len(zs) == model.arch.n_latent_layers


def test_injected_noise_makes_the_forward_deterministic(tiny_config):
    model = build_model(tiny_config)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    noise = [torch.randn(2, b.latent_variates, b.resolution, b.resolution) for b in model.arch.latent_layers]
    a, _, _ = model(x, noise=noise)
    b, _, _ = model(x, noise=noise)
    assert torch.equal(a, b)


def test_masked_forward_with_all_ones_equals_unmasked(tiny_config):
    model = build_model(tiny_config)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    noise = [torch.randn(2, b.latent_variates, b.resolution, b.resolution) for b in model.arch.latent_layers]
    ones = [torch.ones(b.latent_variates) for b in model.arch.latent_layers]
    assert torch.allclose(model(x, noise=noise)[0], model(x, ones, noise)[0])


def test_initialisation_statistics():
    """The original's init: stable-scaled last convs and z projections, zero biases, zero unpool bias, trainable_h."""
    config, _ = load_config(EGS / "cifar10_baseline.cfg")
    torch.manual_seed(0)
    model = build_model(config)
    arch = build_architecture(config.model, config.data)
    s = math.sqrt(1 / arch.n_latent_layers)
    glorot = lambda w: math.sqrt(2.0 / (w[0].numel() + w.shape[0] * w[0][0].numel()))  # noqa: E731
    sd = model.state_dict()
    last = sd["bottom_up.levels_up_downsample.0.residual_block.0.convs.7.weight"]
    assert last.std().item() == pytest.approx(s * glorot(last), rel=0.05)
    z = sd["top_down.levels_down_upsample.10.z_projection.weight"]
    assert z.std().item() == pytest.approx(s * glorot(z), rel=0.1)
    prior_last = sd["top_down.levels_down_upsample.10.prior_net.0.convs.7.weight"]
    assert prior_last.std().item() == pytest.approx(glorot(prior_last), rel=0.05)  # prior net: scale 1
    first = sd["top_down.levels_down_upsample.10.residual_block.0.convs.1.weight"]
    bound = 1 / math.sqrt(first.shape[1])  # PyTorch default init of each cell's first conv
    assert first.abs().max().item() <= bound and first.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert sd["top_down.levels_down_upsample.10.residual_block.0.convs.1.bias"].abs().sum() > 0
    for name, t in sd.items():
        if name.endswith("bias") and "convs.1." not in name:
            assert t.abs().sum() == 0, name
    assert sd["top_down.levels_down_upsample.3.unpool.scale_bias"].shape == (1, 384, 4, 4)
    h = sd["top_down.trainable_h"]
    assert h.abs().max().item() <= math.sqrt(3 / 384) and h.abs().max().item() > 0


def test_prior_zero_init_and_no_stable_init():
    config, _ = load_config(EGS / "tiny.cfg", ["model.initialize_prior_weights_as_zero=True",
                                               "model.stable_init=False"])
    arch = build_architecture(config.model, config.data)
    model = Autoencoder(arch, config.model)
    for _, block in model.top_down.blocks():
        assert block.prior_net[0].convs[-1].weight.abs().sum() == 0
        assert block.posterior_net[0].convs[-1].weight.abs().sum() > 0

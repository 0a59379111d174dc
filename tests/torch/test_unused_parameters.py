"""The parameters that the architecture says get no gradient are exactly those that get none in a training step."""
import pytest
import torch

from efficient_vdvae_core.architecture import build_architecture, unused_parameter_prefixes
from efficient_vdvae_torch.model.autoencoder import Autoencoder
from efficient_vdvae_torch.model.losses import vae_objective
from tests.architectures import UNUSUAL, overrides
from tests.conftest import egs_config

CASES = [(name, overrides(*rest)) for name, *rest in UNUSUAL] + [("tiny", []), ("cpu_demo", None)]


@pytest.mark.parametrize("name,sets", CASES, ids=[c[0] for c in CASES])
def test_parameters_without_gradient_are_known_from_the_architecture(name, sets):
    config = egs_config("cpu_demo") if sets is None else egs_config("tiny", *sets)
    arch = build_architecture(config.model, config.data)
    torch.manual_seed(0)
    model = Autoencoder(arch, config.model)
    images = torch.rand(2, config.data.channels, config.data.target_res, config.data.target_res) * 2 - 1
    logits, posteriors, priors = model(images)
    objective = vae_objective(logits, images, posteriors, priors, config, beta=1.0, gamma_on=True, batch_size=2)
    objective.loss.backward()
    without = sorted(n for n, p in model.named_parameters() if p.grad is None)
    prefixes = tuple(unused_parameter_prefixes(arch))
    assert without == sorted(n for n, _ in model.named_parameters() if n.startswith(prefixes) and prefixes)
    assert all(n in model.state_dict() for n in without)  # they stay in the checkpoints
    if arch.up_levels[-1][1].stride > 1:
        assert without, name

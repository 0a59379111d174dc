"""The JAX conv paths (1x1 as a product, k x k with a product kernel gradient) equal XLA's convolution."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_vdvae_jax.model.layers import ParamKeys, ResidualConvCell, conv1x1, conv_same


def _conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_conv_paths_and_their_gradients(k):
    rng = np.random.default_rng(k)
    x = jnp.asarray(rng.standard_normal((2, 6, 5, 4)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, 4, 3)), jnp.float32)
    grad = jnp.asarray(rng.standard_normal((2, 6, 5, 3)), jnp.float32)
    out, vjp = jax.vjp(conv1x1 if k == 1 else conv_same, x, kernel)
    want, want_vjp = jax.vjp(_conv, x, kernel)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    for got, expected in zip(vjp(grad), want_vjp(grad)):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_posterior_cell_two_inputs_equal_the_concatenation():
    cell = ResidualConvCell(2, 8, 0.5, 3, 1.0, True, residual=False, output_ratio=0.5,
                            keys=ParamKeys(jax.random.key(0)))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32)
    extra = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32)
    np.testing.assert_allclose(cell(x, extra), cell(jnp.concatenate([x, extra], axis=-1)), rtol=1e-5, atol=1e-6)

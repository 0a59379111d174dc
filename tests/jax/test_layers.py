"""The 1x1 conv as a product equals XLA's convolution; the posterior cell's split first conv equals the concat; the
SiLU barrier is CPU-only."""
import jax
import jax.numpy as jnp
import numpy as np

from efficient_vdvae_jax.model import layers
from efficient_vdvae_jax.model.layers import ParamKeys, ResidualConvCell, conv1x1


def _conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_conv1x1_and_its_gradients():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 6, 5, 4)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((1, 1, 4, 3)), jnp.float32)
    grad = jnp.asarray(rng.standard_normal((2, 6, 5, 3)), jnp.float32)
    out, vjp = jax.vjp(conv1x1, x, kernel)
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


def test_silu_barrier_only_in_the_cpu_program():
    """The SiLU's optimization_barrier (a CPU workaround) is absent from the program lowered for a GPU."""
    silu = jax.jit(layers.silu)
    x = jnp.linspace(-3.0, 3.0, 12).reshape(3, 4)
    texts = {p: jax.export.export(silu, platforms=[p])(x).mlir_module() for p in ("cpu", "cuda")}
    assert "optimization_barrier" in texts["cpu"] and "optimization_barrier" not in texts["cuda"]
    np.testing.assert_allclose(silu(x), x * jax.nn.sigmoid(x), rtol=1e-6)

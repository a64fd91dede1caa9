"""RankSeg's image-level BCE (rankseg_jax.rankseg.losses) against torch `BCEWithLogitsLoss`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankseg_jax.rankseg import losses

torch = pytest.importorskip("torch")


def _torch_bce(x: np.ndarray, y: np.ndarray):
    """torch BCEWithLogitsLoss(reduction='mean'): (value, d/dx, d/dy)."""
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.tensor(y, requires_grad=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(xt, yt)
    loss.backward()
    return loss.item(), xt.grad.numpy(), yt.grad.numpy()


@pytest.mark.parametrize("shape", [(3, 7), (4, 16)])  # B*K not / a power of two
def test_bce_matches_torch_gradients(shape):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * 6).astype(np.float32)
    x.flat[:6] = [0.0, 0.0, -0.0, 100.0, -100.0, 30.0]  # exactly 0, and saturated
    y = (rng.random(shape) < 0.5).astype(np.float32)
    y.flat[:6] = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    value, gx, gy = _torch_bce(x, y)
    fn = jax.jit(jax.value_and_grad(losses.bce_with_logits, argnums=(0, 1)))
    got, (jgx, jgy) = fn(jnp.asarray(x), jnp.asarray(y))
    jgx, jgy = np.asarray(jgx), np.asarray(jgy)
    assert float(got) == pytest.approx(value, rel=1e-6)
    # Bit for bit where torch's sigmoid is exact (x = 0: 0.5 - y; saturated: 1 - y or -y).
    np.testing.assert_array_equal(jgx.flat[:6], gx.flat[:6])
    np.testing.assert_array_equal(jgx.flat[:3] * x.size, [0.5, -0.5, -0.5])
    # Elsewhere within float32 rounding of the gradient scale 1 / (B*K).
    np.testing.assert_allclose(jgx, gx, rtol=0, atol=4 * 2.0 ** -24 / x.size)
    np.testing.assert_allclose(jgy, gy, rtol=1e-6, atol=1e-9)


def test_bce_gradient_with_integer_targets_and_weighting():
    x = jnp.zeros((2, 3))
    y = jnp.array([[0, 1, 0], [1, 1, 0]])  # class presence as ints
    g = jax.grad(lambda v: 10.0 * losses.bce_with_logits(v, y))(x)
    np.testing.assert_allclose(g, 10.0 * (0.5 - np.asarray(y, np.float32)) / 6, rtol=1e-6)

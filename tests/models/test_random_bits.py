"""`random_bits.bernoulli` draws exactly the masks of `jax.random.bernoulli` (so dropout,
and every training run, is unchanged), and hands other keys to jax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankseg_jax.models import random_bits, transformer


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 6, 37, 41), (1, 6, 91, 91), (4, 1, 1)])
@pytest.mark.parametrize("p", [0.9, 0.5, 0.1, 1.0, 0.0])
def test_bernoulli_equals_jax_for_threefry_keys(shape, p):
    for key in (jax.random.PRNGKey(3), jax.random.fold_in(jax.random.PRNGKey(0), 11),
                jax.random.key(5)):
        ours = jax.jit(random_bits.bernoulli, static_argnums=2)(key, p, shape)
        ref = jax.jit(jax.random.bernoulli, static_argnums=2)(key, jnp.float32(p), shape)
        assert ours.dtype == jnp.bool_ and ours.shape == shape
        np.testing.assert_array_equal(ours, ref)


def test_bits_equal_jax_bits():
    key = jax.random.PRNGKey(1234)
    np.testing.assert_array_equal(random_bits.random_bits32(key, (33, 65)),
                                  jax.random.bits(key, (33, 65), jnp.uint32))


def test_bits_refuse_other_keys():
    key = jax.random.wrap_key_data(jnp.arange(4, dtype=jnp.uint32), impl="rbg")
    with pytest.raises(ValueError, match="threefry key"):
        random_bits.random_bits32(key, (3,))


def test_traced_probability_matches():
    """drop_path in a scanned stack passes its rate as a traced scalar."""
    key = jax.random.PRNGKey(7)
    f = jax.jit(lambda k, q: random_bits.bernoulli(k, 1.0 - q, (64, 1, 1)))
    g = jax.jit(lambda k, q: jax.random.bernoulli(k, 1.0 - q, (64, 1, 1)))
    np.testing.assert_array_equal(f(key, jnp.float32(0.3)), g(key, jnp.float32(0.3)))


def test_rbg_keys_go_to_jax():
    key = jax.random.wrap_key_data(jnp.arange(4, dtype=jnp.uint32), impl="rbg")
    assert random_bits._threefry_words(key) is None
    np.testing.assert_array_equal(random_bits.bernoulli(key, 0.7, (5, 9)),
                                  jax.random.bernoulli(key, jnp.float32(0.7), (5, 9)))


def test_the_mask_is_not_degenerate():
    """A fraction near p is kept, and different keys give different masks."""
    mask = random_bits.bernoulli(jax.random.PRNGKey(0), 0.9, (200, 500))
    assert abs(float(mask.mean()) - 0.9) < 0.005
    other = random_bits.bernoulli(jax.random.PRNGKey(1), 0.9, (200, 500))
    assert float((mask != other).mean()) > 0.1


def test_dropout_and_drop_path_use_the_same_masks_as_before():
    x = jnp.arange(2 * 3 * 8, dtype=jnp.float32).reshape(2, 3, 8) + 1.0
    key = jax.random.PRNGKey(9)
    keep = jax.random.bernoulli(key, jnp.float32(0.75), x.shape)
    np.testing.assert_array_equal(transformer.dropout(x, 0.25, key),
                                  jnp.where(keep, x / 0.75, 0))
    keep = jax.random.bernoulli(key, jnp.float32(0.5), (2, 1, 1))
    np.testing.assert_array_equal(transformer.drop_path(x, 0.5, key),
                                  jnp.where(keep, x / 0.5, 0))

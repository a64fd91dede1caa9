"""model.vit.scan_layers: the blocks as one lax.scan give the looped model's values, dropout
and drop-path draws, gradients and parameter paths (plain, OCE, remat)."""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rankseg_jax.models import transformer as tfm
from rankseg_jax.models.backbones import vit


def _pair(**changes):
    """The same random ViT twice: looped and scanned (same init key)."""
    fields = {**dict(embed_dim=16, depth=3, num_heads=2, patch_size=8, img_size=(16, 16),
                     drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.3), **changes}
    remat = fields.pop("remat", False)
    looped = vit.ViT(vit.ViTConfig(**fields), remat=remat, rngs=nnx.Rngs(0))
    scanned = copy.deepcopy(looped)
    scanned.cfg = dataclasses.replace(looped.cfg, scan_layers=True)
    # Random values everywhere (zeros-initialised tokens included), identical in both.
    state = nnx.state(looped, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [jax.random.normal(k, x.shape, x.dtype) * 0.2
              for k, x in zip(keys, leaves, strict=True)]
    nnx.update(looped, jax.tree.unflatten(treedef, leaves))
    nnx.update(scanned, jax.tree.unflatten(treedef, leaves))
    return looped, scanned


def _forward(model, images, rng):
    graphdef, params = nnx.split(model)
    return jax.jit(lambda p, x, r: nnx.merge(graphdef, p)(x, r))(params, images, rng)


def _loss_and_grads(model, images, rng):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p):
        grid, tokens = nnx.merge(graphdef, p)(images, rng)
        out = jnp.sum(grid ** 2)
        return out + (0.0 if tokens is None else jnp.sum(jnp.sin(tokens)))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("changes", [{}, {"oce_classes": 3, "oce_start_layer": 2},
                                     {"oce_classes": 3, "oce_start_layer": 0,
                                      "remat": "dots_saveable"}],
                         ids=["plain", "oce-mid", "oce-first-remat"])
def test_scanned_blocks_equal_looped_blocks(changes):
    looped, scanned = _pair(**changes)
    images = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 3))
    assert (jax.tree.structure(nnx.state(looped, nnx.Param))
            == jax.tree.structure(nnx.state(scanned, nnx.Param)))  # same parameter paths
    ref_grid, ref_tokens = _forward(looped, images, None)  # eval
    grid, tokens = _forward(scanned, images, None)
    np.testing.assert_allclose(grid, ref_grid, rtol=1e-5, atol=1e-5)
    if ref_tokens is not None:
        np.testing.assert_allclose(tokens, ref_tokens, rtol=1e-5, atol=1e-5)
    # Training (dropout, drop path): the loss of the outputs and every gradient.
    ref_value, ref_grads = _loss_and_grads(looped, images, jax.random.PRNGKey(4))
    value, grads = _loss_and_grads(scanned, images, jax.random.PRNGKey(4))
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads),
                            jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5,
                                   err_msg=jax.tree_util.keystr(path))


def test_scan_draws_each_blocks_own_drop_path():
    # Rates 0, 0.45, 0.9 over the blocks: giving every block block 0's rate (0) would make
    # the scanned model deterministic; compare with the looped model over several keys.
    looped, scanned = _pair(drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.9)
    images = jax.random.normal(jax.random.PRNGKey(2), (4, 16, 16, 3))
    for seed in range(3):
        rng = jax.random.PRNGKey(10 + seed)
        np.testing.assert_allclose(_forward(scanned, images, rng)[0],
                                   _forward(looped, images, rng)[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(_forward(scanned, images, jax.random.PRNGKey(10))[0],
                           _forward(scanned, images, None)[0])


def test_drop_path_accepts_a_traced_rate():
    x = jnp.ones((8, 3))
    key = jax.random.PRNGKey(0)
    np.testing.assert_array_equal(jax.jit(tfm.drop_path)(x, jnp.float32(0.5), key),
                                  tfm.drop_path(x, 0.5, key))

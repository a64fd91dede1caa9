"""Unit tests of the Mask2Former pixel decoder and transformer decoder (random tiny models)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rankseg_jax.convert import engine
from rankseg_jax.models.heads.mask2former import (
    MSDeformAttnPixelDecoder,
    MultiScaleMaskedTransformerDecoder,
)
from rankseg_jax.models.heads.mask2former.transformer_decoder import clear_full_rows

D, Q, K = 32, 6, 5
# Optimisation level 0 halves the XLA:CPU compile time of these small graphs (tests only).
FAST = {"xla_backend_optimization_level": 0}


class _Head(nnx.Module):
    def __init__(self, rngs):
        self.pixel_decoder = MSDeformAttnPixelDecoder((8, 16, 24, 32), conv_dim=D, mask_dim=D,
                                                      encoder_layers=1, encoder_ffn=64,
                                                      num_heads=4, rngs=rngs)
        self.predictor = MultiScaleMaskedTransformerDecoder(
            in_channels=D, hidden_dim=D, num_queries=Q, num_heads=4, ffn_dim=64, num_layers=3,
            num_classes=K, mask_dim=D, rngs=rngs)

    def __call__(self, feats):
        mask_features, maps = self.pixel_decoder(feats)
        return self.predictor(maps, mask_features, return_attn_masks=True)


def _random_model(factory, seed):
    """The module built abstractly, every parameter filled with well-scaled random values
    (much faster than running the initialisers eagerly on CPU)."""
    model = nnx.eval_shape(factory)
    rng = np.random.default_rng(seed)
    params = {}
    for path, shape in engine.param_shapes(model).items():
        if path[-1] == "kernel":
            v = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
        elif path[-1] == "scale":
            v = 1 + 0.25 * rng.normal(size=shape)
        elif path[-1] == "bias":
            v = 0.1 * rng.normal(size=shape)
        else:  # query_feat, query_embed, level_embed
            v = rng.normal(size=shape)
        params[path] = v.astype(np.float32)
    engine.load_into(model, params)
    return model


def _features(rng, b):
    sizes = {"res2": (16, 24, 8), "res3": (8, 12, 16), "res4": (4, 6, 24), "res5": (2, 3, 32)}
    return {k: rng.normal(size=(b, h, w, c)).astype(np.float32)
            for k, (h, w, c) in sizes.items()}


def test_head_batch_size_invariant():
    model = _random_model(lambda: _Head(nnx.Rngs(0)), 0)
    graph, state = nnx.split(model)
    run = jax.jit(lambda st, f: nnx.merge(graph, st)(f), compiler_options=FAST)
    feats = _features(np.random.default_rng(1), 3)
    full = run(state, feats)
    masks = np.concatenate([np.asarray(m).ravel() for m in full["cross_attn_masks"]])
    assert 0.05 < masks.mean() < 0.95  # the attention masks are not trivial
    for i in range(3):
        one = run(state, {k: v[i:i + 1] for k, v in feats.items()})
        for name in ("class_logits", "mask_logits"):
            np.testing.assert_allclose(np.asarray(full[name][:, i:i + 1]),
                                       np.asarray(one[name]), rtol=0, atol=1e-5)
        np.testing.assert_allclose(np.asarray(full["query_features"][:, i:i + 1]),
                                   np.asarray(one["query_features"]), rtol=0, atol=1e-5)
        for a, b in zip(full["cross_attn_masks"], one["cross_attn_masks"], strict=True):
            np.testing.assert_array_equal(np.asarray(a[i:i + 1]), np.asarray(b))
    assert full["class_logits"].shape == (4, 3, Q, K + 1)
    assert full["mask_logits"].shape == (4, 3, Q, 16, 24)
    assert full["query_features"].shape == (3, 3, Q, D)


def test_clear_full_rows():
    blocked = np.array([[[True, True, True], [True, False, True], [False, False, False]]])
    np.testing.assert_array_equal(
        np.asarray(clear_full_rows(jnp.asarray(blocked))),
        [[[False, False, False], [True, False, True], [False, False, False]]])


def test_all_masked_rows_attend_everywhere():
    """Masks that block every key (mask logits < 0 everywhere) are cleared: the layers then see
    exactly what they see when nothing is blocked (mask logits > 0 everywhere)."""
    model = _random_model(lambda: MultiScaleMaskedTransformerDecoder(
        in_channels=D, hidden_dim=D, num_queries=Q, num_heads=4, ffn_dim=64, num_layers=3,
        num_classes=K, mask_dim=D, rngs=nnx.Rngs(0)), 2)
    rng = np.random.default_rng(3)
    maps = [rng.normal(size=(2, h, w, D)).astype(np.float32) for h, w in ((2, 3), (4, 6), (8, 12))]
    mask_features = np.abs(rng.normal(size=(2, 16, 24, D))).astype(np.float32) + 0.1
    last = model.mask_embed.layers[2]
    last.kernel.set_value(jnp.zeros_like(last.kernel[...]))
    graph, state = nnx.split(model)
    run = jax.jit(lambda st, m, f: nnx.merge(graph, st)(m, f, return_attn_masks=True),
                  compiler_options=FAST)
    outs = []
    for sign in (-1.0, 1.0):
        last.bias.set_value(jnp.full((D,), sign))
        _, state = nnx.split(model)
        out = run(state, maps, mask_features)
        assert np.all(np.sign(np.asarray(out["mask_logits"])) == sign)
        for m in out["cross_attn_masks"]:
            assert not np.asarray(m).any()
        assert np.all(np.isfinite(np.asarray(out["query_features"])))
        outs.append(out)
    np.testing.assert_allclose(np.asarray(outs[0]["query_features"]),
                               np.asarray(outs[1]["query_features"]), rtol=0, atol=1e-6)

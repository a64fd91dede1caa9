"""Unit tests of the RankSeg core ops and model features (by definition; resize: test_resize)."""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rankseg_jax import config as config_lib
from rankseg_jax import models
from rankseg_jax.rankseg import ranking
from rankseg_jax.train import losses


def test_ranking_ops_by_definition():
    scores = jnp.array([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, -2.0, 1.0, 0.0, 4.0]])
    _, idx = ranking.select_topk(scores, 3)
    np.testing.assert_array_equal(idx, [[1, 3, 4], [0, 4, 2]])
    feats = jnp.arange(2 * 5 * 2).reshape(2, 5, 2)
    np.testing.assert_array_equal(ranking.gather_ranked(feats, idx),
                                  [[[2, 3], [6, 7], [8, 9]], [[10, 11], [18, 19], [14, 15]]])
    labels = jnp.array([[[1, 3, 0, 255]], [[4, 4, 3, -1]]])
    np.testing.assert_array_equal(ranking.remap_labels(labels, idx, 5, 255),
                                  [[[0, 1, 255, 255]], [[1, 1, 255, 255]]])
    maps = jnp.ones((2, 3, 1, 1)) * jnp.array([1.0, 2.0, 3.0])[None, :, None, None]
    full = ranking.scatter_to_classes(maps, idx, 5)
    np.testing.assert_array_equal(full[0, :, 0, 0], [-100, 1, -100, 2, 3])
    np.testing.assert_array_equal(full[1, :, 0, 0], [1, -100, 3, -100, 2])
    np.testing.assert_array_equal(ranking.class_histogram(labels, 5), [[1, 1, 0, 1, 0],
                                                                      [0, 0, 0, 1, 2]])
    present = jnp.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    _, oracle_idx = ranking.select_topk(ranking.oracle_scores(scores, present), 3)
    np.testing.assert_array_equal(oracle_idx, [[0, 2, 1], [0, 4, 2]])
    keep = ranking.dynamic_rank_mask(jnp.array([[-5.0, -6.0, 1.0], [2.0, 0.1, -3.0]]), 0.5)
    np.testing.assert_array_equal(keep, [[True, False, True], [True, True, False]])


def _tiny(**kw):
    return helpers.tiny_config("rankseg", **kw)


def test_jit_forward_backward_and_dropout():
    cfg = _tiny()
    cfg.model.vit.drop_path_rate = 0.1
    cfg.model.head.dropout = 0.1
    model = models.build_model(cfg)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    y = jax.random.randint(jax.random.key(2), (2, 64, 64), 0, 20)

    @jax.jit
    def loss_fn(params, key):
        m = nnx.merge(graphdef, params, rest)
        out = m(x, train=True, rng=key)
        return losses.segmentation_losses(out, y, cfg.loss, 20, 255)["loss"]

    value, grads = jax.jit(jax.value_and_grad(loss_fn))(params, jax.random.key(0))
    assert np.isfinite(value)
    norms = jax.tree.map(lambda g: float(jnp.abs(g).sum()), nnx.to_pure_dict(grads))
    assert norms["head"]["ml_fc"]["kernel"] > 0 and norms["backbone"]["pos_embed"] > 0
    assert all(np.isfinite(v) for v in jax.tree.leaves(norms))
    # Dropout is active with a key, reproducible for the same key, absent without one.
    a, b = loss_fn(params, jax.random.key(0)), loss_fn(params, jax.random.key(3))
    assert a == loss_fn(params, jax.random.key(0)) and a != b
    m = nnx.merge(graphdef, params, rest)
    np.testing.assert_array_equal(m(x)["mask_logits"], m(x, train=True)["mask_logits"])


def test_temperature_variants_and_sort_only():
    shared = _tiny()
    shared.model.rankseg.temperature = "shared"
    model = models.build_model(shared)
    assert model.head.mask_norm.scale.shape == (1,)
    sort_only = _tiny(topk=20)
    out = models.build_model(sort_only)(jnp.ones((1, 64, 64, 3)), full_logits=True)
    assert out["mask_logits"].shape == (1, 20, 4, 4)
    assert sorted(np.asarray(out["topk_index"][0]).tolist()) == list(range(20))
    assert (out["full_logits"] > -100).all()


def test_dynamic_kappa_masks_low_scores():
    cfg = _tiny()
    cfg.model.rankseg.dynamic_k_threshold = 0.5
    model = models.build_model(cfg)
    x = jax.random.normal(jax.random.key(4), (2, 64, 64, 3))
    out = model(x, full_logits=True)
    scores = jnp.take_along_axis(out["image_logits"], out["topk_index"], axis=1)
    keep = (jax.nn.sigmoid(scores) >= 0.5).at[:, 0].set(True)
    np.testing.assert_array_equal(out["rank_valid"], keep)
    dropped = ~np.asarray(keep)
    assert (np.asarray(out["mask_logits"]).transpose(0, 2, 3, 1)[dropped[:, None, None, :]
            .repeat(4, 1).repeat(4, 2)] == -100).all()
    # Training ignores the threshold (static kappa).
    assert bool(model(x, train=True)["rank_valid"].all())


def test_oracle_selects_ground_truth_classes_first():
    cfg = _tiny()
    cfg.model.rankseg.oracle = "eval"
    model = models.build_model(cfg)
    x = jax.random.normal(jax.random.key(5), (2, 64, 64, 3))
    present = jnp.zeros((2, 20)).at[0, jnp.array([19, 3])].set(1).at[1, 7].set(1)
    out = model(x, gt_present=present)
    assert set(np.asarray(out["topk_index"][0, :2]).tolist()) == {3, 19}
    assert int(out["topk_index"][1, 0]) == 7
    # Training uses the predicted ranking in 'eval' oracle mode; eval without labels fails.
    model(x, train=True)
    with pytest.raises(ValueError, match="oracle"):
        model(x)


def test_config_validation_names_the_option():
    cfg = _tiny()
    cfg.model.rankseg.topk = 21
    with pytest.raises(config_lib.ConfigError, match="model.rankseg.topk"):
        config_lib.validate(cfg)
    cfg = _tiny()
    cfg.data.crop_size = (500, 512)
    with pytest.raises(config_lib.ConfigError, match="data.crop_size"):
        config_lib.validate(cfg)
    cfg = _tiny()
    cfg.model.rankseg.ml_encoder = "mlp"
    with pytest.raises(config_lib.ConfigError, match="model.rankseg.ml_encoder"):
        config_lib.validate(cfg)


@pytest.mark.parametrize("head,expected", [("segmenter", 102_497_580),
                                           ("rankseg", 109_702_138)])
def test_parameter_counts_equal_official(head, expected):
    cfg = config_lib.base_config()
    cfg.model.rankseg.enabled = head == "rankseg"
    cfg.model.head.n_layers = 2 if head == "segmenter" else 3
    model = nnx.eval_shape(lambda: models.build_model(cfg))
    count = sum(int(np.prod(v.shape)) for _, v in
                nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert count == expected

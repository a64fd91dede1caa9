"""Optimizer: mmcv poly schedule, official parameter-wise weight decay, torch SGD numerics."""

import numpy as np
import pytest
from helpers import small_train_config, tiny_config

from rankseg_jax import config as config_lib
from rankseg_jax.config import validation
from rankseg_jax.convert.tables.mmseg import official_names
from rankseg_jax.train import optim

RANKSEG_KEYS = (("pos_embed", 0.0), ("cls_token", 0.0), ("norm", 0.0),
                ("decode_head.blocks.0.", 100.0), ("decode_head.ml_fc", 100.0))


def test_poly_schedule_matches_mmcv_formula():
    c = tiny_config()
    c.train.steps = 160_000
    for it in (0, 1, 1000, 80_000, 159_999):
        want = (1e-3 - 1e-5) * (1 - it / 160_000) ** 0.9 + 1e-5
        assert optim.lr_at(c, it) == pytest.approx(want, rel=1e-5)
    assert optim.lr_at(c, 0) == pytest.approx(1e-3)


def _mmcv_linear_warmup(it: int, warmup_iters: int, ratio: float) -> float:
    """mmcv/runner/hooks/lr_updater.py get_warmup_lr('linear') factor, Python float64."""
    if it >= warmup_iters:
        return 1.0
    k = (1 - it / warmup_iters) * (1 - ratio)
    return 1 - k


def test_linear_warmup_mmcv_style():
    c = tiny_config()
    c.train.steps, c.optim.warmup_steps, c.optim.warmup_ratio = 100, 10, 0.1
    poly = lambda it: (1e-3 - 1e-5) * (1 - it / 100) ** 0.9 + 1e-5  # noqa: E731
    for it in (0, 5, 9, 10, 50):
        want = poly(it) * _mmcv_linear_warmup(it, 10, 0.1)
        assert optim.lr_at(c, it) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("warm,ratio", [(1500, 1e-6), (10, 0.1), (7, 1 / 3), (3, 1e-3)])
def test_linear_warmup_factor_is_mmcvs_float64_formula_rounded_once(warm, ratio):
    c = tiny_config()
    c.train.steps, c.optim.schedule, c.optim.lr = 2 * warm, "constant", 1.0
    c.optim.warmup_steps, c.optim.warmup_ratio = warm, ratio
    its = sorted({0, 1, 2, warm // 2, warm - 1, warm, warm + 1})
    got = np.array([optim.lr_at(c, it) for it in its], np.float32)  # lr 1.0: the factor itself
    want = np.array([_mmcv_linear_warmup(it, warm, ratio) for it in its], np.float32)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(optim.linear_warmup_factors(warm, ratio),
                                  [np.float32(_mmcv_linear_warmup(i, warm, ratio))
                                   for i in range(warm + 1)])
    assert got[0] == np.float32(ratio)  # float32 1 - (1 - 1e-6) * 1 would be 1.0133e-6


def test_warmup_ratio_is_validated():
    c = tiny_config()
    c.train.steps, c.optim.warmup_steps = 100, 10
    for bad in (0.0, 1.5):
        c.optim.warmup_ratio = bad
        with pytest.raises(config_lib.ConfigError, match="optim.warmup_ratio"):
            validation.validate_numbers(c)
    c.optim.warmup_ratio = 1.0
    validation.validate_numbers(c)


def test_rankseg_weight_decay_groups_official():
    c = tiny_config("rankseg")
    c.optim.weight_decay, c.optim.decay_mult = 1e-6, RANKSEG_KEYS
    names = official_names(c)
    params = {}
    for path in names:  # the table only needs the tree structure
        node = params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = np.zeros(1)
    table = {names[p]: wd for p, wd in optim.decay_table(c, params).items()}
    zero = {"backbone.pos_embed", "backbone.cls_token"}
    zero |= {f"decode_head.blocks.{i}.norm{j}.{w}" for i in (1, 2) for j in (1, 2)
             for w in ("weight", "bias")}
    zero |= {f"decode_head.{n}.{w}" for n in ("decoder_norm", "decoder_norm2", "mask_norm")
             for w in ("weight", "bias")}
    for name, wd in table.items():
        if name in zero:
            want = 0.0
        elif name.startswith("decode_head.blocks.0.") or name.startswith("decode_head.ml_fc"):
            want = 1e-4
        else:  # includes every backbone LayerNorm (ln1/ln2: no "norm" in the name)
            want = 1e-6
        assert wd == pytest.approx(want, rel=1e-12, abs=0), name
    assert zero <= set(table)
    assert table["decode_head.blocks.0.norm1.weight"] == pytest.approx(1e-4)
    assert any(".ln1." in n and table[n] == pytest.approx(1e-6) for n in table)


def test_decay_multiplier_longest_key_first_then_alphabetical():
    keys = (("norm", 0.0), ("blocks.0.", 100.0), ("ab", 2.0), ("aa", 3.0))
    assert optim.decay_multiplier("decode_head.blocks.0.norm1.weight", keys) == 100.0
    assert optim.decay_multiplier("x.aab", keys) == 3.0  # tie on length: alphabetical
    assert optim.decay_multiplier("backbone.layers.0.ln1.weight", keys) == 1.0


def test_sgd_coupled_l2_momentum_by_hand():
    """Two steps of torch SGD(momentum=0.9) with coupled wd, computed by hand."""
    c = small_train_config(**{"train.steps": 10})
    c.optim.decay_mult = ()
    c.optim.weight_decay = 0.5
    params = {"p": np.array([1.0, -2.0], np.float32)}
    tx = optim.make_optimizer(c, params)
    state = tx.init(params)
    g = np.array([0.3, 0.1], np.float32)
    lr0, lr1 = optim.lr_at(c, 0), optim.lr_at(c, 1)
    p = params["p"].astype(np.float64)
    buf = g + 0.5 * p  # torch: buf = d_p on the first step
    p1 = p - lr0 * buf
    buf = 0.9 * buf + (g + 0.5 * p1)
    p2 = p1 - lr1 * buf
    import optax
    cur = params
    for _ in range(2):
        upd, state = tx.update({"p": g}, state, cur)
        cur = optax.apply_updates(cur, upd)
    np.testing.assert_allclose(cur["p"], p2, rtol=1e-6)


def test_adamw_and_clipping_build_and_update():
    import optax
    c = small_train_config()
    c.optim.name, c.optim.clip_grad_norm = "adamw", 1.0
    c.optim.decay_mult = ()
    params = {"p": np.ones(3, np.float32)}
    tx = optim.make_optimizer(c, params)
    upd, _ = tx.update({"p": np.full(3, 100.0, np.float32)}, tx.init(params), params)
    # Adam's first step is lr * sign(g) (+ decoupled wd * lr * p); clipping does not change it.
    want = -optim.lr_at(c, 0) * (1.0 + 1e-6)
    np.testing.assert_allclose(upd["p"], want, rtol=1e-4)
    assert optax.global_norm(upd) > 0


def test_bad_optimizer_options_name_the_option():
    c = small_train_config()
    c.optim.name = "lamb"
    with pytest.raises(ValueError, match="optim.name"):
        config_lib.validate(c)


@pytest.mark.parametrize("platform", ["cpu", "gpu", None])
def test_tree_norm_matches_a_float64_norm(platform, monkeypatch):
    """Both forms of `tree_norm` (the CPU's matrix-product sums of squares and optax's
    reductions, chosen by the platform; None = jax's default backend, the CPU here) give
    the float64 global norm: leaves large and divisible by 16, large and odd-sized, small,
    bfloat16, empty, and a nested tree."""
    import jax
    import jax.numpy as jnp
    import optax
    calls = []
    monkeypatch.setattr(optax, "global_norm", lambda t, f=optax.global_norm: calls.append(1)
                        or f(t))
    rng = np.random.default_rng(0)
    tree = {"w": rng.standard_normal((384, 1536)).astype(np.float32) * 0.03,
            "odd": rng.standard_normal((4099,)).astype(np.float32),
            "b": rng.standard_normal((7,)).astype(np.float32),
            "empty": np.zeros((0, 16), np.float32),
            "nested": {"h": jnp.asarray(rng.standard_normal((64, 128)), jnp.bfloat16)}}
    want = np.sqrt(sum(np.square(np.asarray(x, np.float64)).sum()
                       for x in jax.tree.leaves(tree)))
    got = jax.jit(optim.tree_norm, static_argnums=1)(tree, platform)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, rtol=2e-6)
    assert bool(calls) == (platform == "gpu")
    assert float(optim.tree_norm({}, platform)) == 0.0
    # A non-finite entry anywhere makes the norm non-finite (the step's finiteness check).
    tree["w"][5, 7] = np.nan
    assert not np.isfinite(float(optim.tree_norm(tree, platform)))


"""Mask2Former's optimizer: the official parameter groups (fixture manifest), torch AdamW +
clip_grad_norm_ + detectron2 WarmupPolyLR numerics, and the option checks."""

import json

import jax
import numpy as np
import optax
import pytest
import yaml
from helpers import M2F_FIXTURES, mask2former_fixture_config

from configs import ade20k_mask2former
from rankseg_jax import config as config_lib
from rankseg_jax import models, param_paths
from rankseg_jax.convert.tables import mask2former as m2f_table
from rankseg_jax.train import optim

torch = pytest.importorskip("torch")


def _fixture_optim_config(run: str):
    """Our config of a fixture run with the optimizer of its detectron2 `SOLVER` section."""
    c = mask2former_fixture_config(run)
    s = yaml.safe_load((M2F_FIXTURES / "configs" / f"{run}.yaml").read_text())["SOLVER"]
    assert s["OPTIMIZER"] == "ADAMW" and s["WEIGHT_DECAY_NORM"] == s["WEIGHT_DECAY_EMBED"] == 0
    o = c.optim
    o.lr, o.weight_decay = s["BASE_LR"], s["WEIGHT_DECAY"]
    o.backbone_lr_mult, o.ml_head_lr_mult = s["BACKBONE_MULTIPLIER"], s["MLHEAD_MULTIPLIER"]
    return c


def test_param_groups_equal_the_official_builder():
    """Every parameter's (lr, weight decay) = the official `build_optimizer` groups
    (`manifest.json['optimizer_param_groups']`, the tiny RankSeg model), through the official
    names of `model_rows`; the one deliberate difference is `ml_head.cls_emb` (decay 0)."""
    c = _fixture_optim_config("sem_rankseg")
    manifest = json.loads((M2F_FIXTURES / "manifest.json").read_text())
    official = {}
    for group, names in manifest["optimizer_param_groups"]["groups"].items():
        lr, wd = (float(kv.split("=")[1]) for kv in group.split())
        official.update({n: (lr, wd) for n in names})
    _, abstract = models.abstract_model(c)
    ours = optim.param_groups(c, abstract)
    rows = m2f_table.model_rows(c)
    assert {r.path for r in rows} == set(ours)  # every parameter has an official name
    assert {r.key for r in rows} == set(official)
    fixed = {"ml_head.cls_emb"}
    seen = set()
    for row in rows:
        mult, wd = ours[row.path]
        got = (c.optim.lr * mult, wd)
        want = official[row.key]
        if row.key in fixed:
            assert want == pytest.approx((1e-5, 0.05)) and got == pytest.approx((1e-5, 0.0))
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=0), (row.key, row.path)
        seen.add(row.key)
    assert seen == set(official)
    # The four official groups are all present (and the pixel decoder's bare level_embed is
    # decayed, the decoder's nn.Embedding one is not).
    assert len({(round(c.optim.lr * m, 12), w) for m, w in ours.values()}) == 4
    assert ours[("pixel_decoder", "level_embed")] == (1.0, 0.05)
    assert ours[("predictor", "level_embed")] == (1.0, 0.0)


def test_plain_config_has_no_ml_head_and_ml_head_mult_is_refused():
    c = ade20k_mask2former.get_config("smoke")
    c.unlock()
    c.optim.ml_head_lr_mult = 0.1
    with pytest.raises(config_lib.ConfigError, match="optim.ml_head_lr_mult"):
        config_lib.validate(c, num_devices=1, process_count=1, check_files=False)
    c.optim.ml_head_lr_mult, c.optim.no_decay_paths = 1.0, ("norm(",)
    with pytest.raises(config_lib.ConfigError, match="optim.no_decay_paths"):
        config_lib.validate(c, num_devices=1, process_count=1, check_files=False)


def test_poly_schedule_is_detectron2_warmup_poly_lr():
    c = ade20k_mask2former.get_config("")
    assert c.optim.min_lr == 0.0 and c.optim.warmup_steps == 0 and c.train.steps == 160_000
    for it in (0, 1, 5000, 80_000, 159_999):
        # d2 `WarmupPolyLR.get_lr`: base * (1 - it / max_iter) ** 0.9, iteration 0 = base.
        assert optim.lr_at(c, it) == pytest.approx(1e-4 * (1 - it / 160_000) ** 0.9, rel=1e-5)


@pytest.mark.parametrize("scale", [1e-4, 10.0])  # below and above the 0.01 max norm
def test_clip_is_torch_clip_grad_norm(scale):
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(3, 4)).astype(np.float32) * scale,
             "b": rng.normal(size=(5,)).astype(np.float32) * scale}
    tensors = {k: torch.zeros(v.shape, requires_grad=True) for k, v in grads.items()}
    for k, t in tensors.items():
        t.grad = torch.from_numpy(grads[k].copy())
    torch.nn.utils.clip_grad_norm_(list(tensors.values()), 0.01)
    out, _ = optim.clip_by_global_norm_torch(0.01).update(grads, optax.EmptyState())
    for k, t in tensors.items():
        np.testing.assert_allclose(out[k], t.grad.numpy(), rtol=2e-6, atol=0)


def test_steps_equal_torch_adamw_with_the_same_groups():
    """Five steps of our optimizer == torch AdamW over per-parameter groups with
    clip_grad_norm_(0.01) and the poly lr, on a tiny tree spanning every group kind."""
    c = ade20k_mask2former.get_config("rankseg,smoke")
    c.unlock()
    c.optim.lr, c.train.steps = 3e-2, 10  # large steps: differences would show
    rng = np.random.default_rng(1)
    params = {"backbone": {"norm0": {"scale": rng.normal(size=(4,))},
                           "patch_embed": {"proj": {"kernel": rng.normal(size=(3, 4))}}},
              "ml_head": {"cls_emb": rng.normal(size=(1, 5, 4)),
                          "fc": {"kernel": rng.normal(size=(5, 4))}},
              "ml_norm": {"scale": rng.normal(size=(6,))},
              "predictor": {"query_feat": rng.normal(size=(3, 4)),
                            "class_embed": {"kernel": rng.normal(size=(4, 6))}},
              "pixel_decoder": {"level_embed": rng.normal(size=(3, 4))}}
    params = jax.tree.map(lambda x: x.astype(np.float32), params)
    groups = optim.param_groups(c, params)
    tx = optim.make_optimizer(c, params)
    state, ours = tx.init(params), params
    flat = [(p, np.asarray(x)) for p, x in
            ((p, param_paths.get_path(params, p)) for p in groups)]
    tparams = [torch.tensor(x.copy(), requires_grad=True) for _, x in flat]
    base = [c.optim.lr * groups[p][0] for p, _ in flat]
    topt = torch.optim.AdamW([{"params": [t], "lr": lr, "weight_decay": groups[p][1]}
                              for t, (p, _), lr in zip(tparams, flat, base, strict=True)],
                             lr=c.optim.lr, betas=(0.9, 0.999), eps=1e-8)
    for it in range(5):
        g = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32) * 0.02, params)
        upd, state = tx.update(g, state, ours)
        ours = optax.apply_updates(ours, upd)
        for t, (p, _) in zip(tparams, flat, strict=True):
            t.grad = torch.from_numpy(np.asarray(param_paths.get_path(g, p)).copy())
        torch.nn.utils.clip_grad_norm_(tparams, 0.01)
        for group, lr in zip(topt.param_groups, base, strict=True):
            group["lr"] = lr * (1 - it / c.train.steps) ** 0.9  # d2 WarmupPolyLR
        topt.step()
    # float32 rounding of |p| ~ 1 (ulp 1.2e-7) over 5 steps; a wrong lr multiplier or decay
    # would be off by >= lr * wd * |p| * 5 ~ 7e-3.
    for t, (p, _) in zip(tparams, flat, strict=True):
        np.testing.assert_allclose(np.asarray(param_paths.get_path(ours, p)),
                                   t.detach().numpy(), rtol=0, atol=2e-6, err_msg=str(p))
    assert groups[("ml_head", "cls_emb")] == (0.1, 0.0)
    assert groups[("ml_norm", "scale")] == (1.0, 0.0)
    assert groups[("backbone", "patch_embed", "proj", "kernel")] == (0.1, 0.05)

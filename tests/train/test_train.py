"""Training loop: a quick end-to-end run, NaN detection, config validation, weight init."""

import json

import jax
import numpy as np
import pytest
from helpers import FIXTURES, small_train_config, tiny_config

from rankseg_jax import checkpointing, sharding
from rankseg_jax import config as config_lib
from rankseg_jax.data import pipeline as input_pipeline
from rankseg_jax.train import loop as train
from rankseg_jax.train import step as ts


def test_tiny_train_logs_and_checkpoints(tmp_path):
    c = small_train_config(**{"train.steps": 2, "train.ckpt_every": 1, "train.log_every": 1,
                              "train.grad_accum": 2})
    out = train.train_and_evaluate(c, tmp_path)
    assert out["step"] == 2 and out["init"] == "random init"
    for k in ("loss", "loss_seg", "loss_img", "acc_seg", "img_recall", "img_precision", "lr",
              "step_time", "images_per_s"):
        assert np.isfinite(out["train"][k]), k
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["lr"] == pytest.approx((1e-3 - 1e-5) * 1.0 + 1e-5)
    assert (tmp_path / "tensorboard").is_dir()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == [1, 2]


def test_nan_stops_training_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    c = small_train_config(**{"train.steps": 4, "train.ckpt_every": 1})
    real, calls = input_pipeline.to_global, []

    def poisoned(batch, sharding_):
        calls.append(1)
        if len(calls) == 2:  # the second step sees a NaN image
            batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        return real(batch, sharding_)

    monkeypatch.setattr(input_pipeline, "to_global", poisoned)
    with pytest.raises(train.TrainingDiverged,
                       match="non-finite loss, gradients or parameters at step 2"):
        train.train_and_evaluate(c, tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1]


@pytest.mark.parametrize("change,match", [
    ({"train.batch_size": 6}, "mesh.data\\*mesh.fsdp=4"),
    ({"train.grad_accum": 4, "train.batch_size": 8}, "micro-batch"),
    ({"optim.name": "lamb"}, "optim.name"),
    ({"mesh.data": 3}, "mesh.data"),
])
def test_config_validation_names_the_option(change, match):
    c = small_train_config(**{"train.batch_size": 8})
    c.mesh.data = 4  # pretend 4 devices
    for k, v in change.items():
        sect, key = k.split(".")
        c[sect][key] = v
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c, num_devices=4, process_count=1)


def test_missing_dataset_names_root_and_prepare_command(tmp_path):
    c = small_train_config()
    c.data.name, c.data.format, c.model.num_classes = "ade20k", "array_record", 150
    c.model.rankseg.topk, c.data.reduce_zero_label = 8, True
    c.data.root = str(tmp_path / "nope")
    with pytest.raises(config_lib.ConfigError, match=r"(?s)data.root=.*python -m data.prepare"):
        config_lib.validate(c, num_devices=1, process_count=1)


def _setup(c):
    return ts.make_setup(c, sharding.make_mesh(c, jax.devices()[:1]))


def test_init_from_official_pth_and_params_only_dir(tmp_path):
    from rankseg_jax.convert import torch_io
    from rankseg_jax.convert.tables import mmseg
    c = tiny_config("rankseg")
    setup = _setup(c)
    params = train.pretrained_params(setup, str(FIXTURES / "rankseg.pth"))
    want = mmseg.convert_state_dict(torch_io.read_pth(FIXTURES / "rankseg.pth"), c)
    for path, v in want.items():
        got = params
        for k in path:
            got = got[k]
        np.testing.assert_array_equal(np.asarray(got), v)
    # Round trip through the params-only format, then init.resume from it.
    checkpointing.save_params(tmp_path / "p", jax.device_get(params), {"source": "fixture"})
    assert checkpointing.read_metadata(tmp_path / "p") == {"source": "fixture"}
    c.init.resume = str(tmp_path / "p")
    ck = checkpointing.Checkpointer(tmp_path / "run" / "checkpoints", c)
    state, src = train.initial_state(setup, ck, None)
    ck.close()
    assert src.startswith("params-only") and int(state["step"]) == 0
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unknown_pretrained_format_is_clear(tmp_path):
    c = tiny_config("rankseg")
    from rankseg_jax.convert import CheckpointMismatch

    corrupt = tmp_path / "w.safetensors"
    corrupt.write_bytes(b"x")
    with pytest.raises(CheckpointMismatch, match="w.safetensors: cannot read"):
        train.pretrained_params(_setup(c), str(corrupt))
    unknown = tmp_path / "w.onnx"
    unknown.write_bytes(b"x")
    with pytest.raises(CheckpointMismatch, match="w.onnx: unknown checkpoint extension"):
        train.pretrained_params(_setup(c), str(unknown))


def _one_step(config, batch):
    """Params and metrics after one train step from the config's random init."""
    setup = ts.make_setup(config, sharding.make_mesh(config))
    state = ts.init_state(setup)
    step = ts.make_train_step(setup)
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    return jax.device_get(state["params"]), ts.finalize_metrics(jax.device_get(metrics))


def _batch(config):
    it = input_pipeline.make_train_iterator(config)
    return input_pipeline.to_global(next(it), sharding.batch_sharding(
        sharding.make_mesh(config)))


def test_grad_accum_and_remat_equal_the_plain_step():
    """Micro-batching and rematerialisation (each remat policy) change memory, not the
    update (no dropout)."""
    base = small_train_config(**{"model.head.dropout": 0.0})
    batch = _batch(base)
    params, metrics = _one_step(base, batch)
    policies = [{"model.remat": True, "model.remat_policy": p}
                for p in ("dots_saveable", "dots_with_no_batch_dims_saveable")]
    for change in ({"train.grad_accum": 2}, {"model.remat": True}, *policies):
        other, other_metrics = _one_step(small_train_config(**{"model.head.dropout": 0.0},
                                                            **change), batch)
        assert other_metrics["loss"] == pytest.approx(metrics["loss"], rel=1e-5), change
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(other), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(change))


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32():
    base = small_train_config(**{"model.head.dropout": 0.0})
    batch = _batch(base)
    params, metrics = _one_step(base, batch)
    bf_params, bf_metrics = _one_step(small_train_config(
        **{"model.head.dropout": 0.0, "model.dtype": "bfloat16"}), batch)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf_params))
    assert np.isfinite(bf_metrics["loss"])
    assert bf_metrics["loss"] == pytest.approx(metrics["loss"], rel=0.05)


def test_keeps_latest_and_best_by_miou(tmp_path, monkeypatch):
    c = small_train_config(**{"train.steps": 4, "train.ckpt_every": 1, "train.eval_every": 1,
                              "train.keep_checkpoints": 1})
    miou = {1: 0.2, 2: 0.9, 3: 0.1, 4: 0.3}
    monkeypatch.setattr(train, "_evaluate", lambda config, setup, params, workdir, step: {
        "mIoU": miou[step], "mAcc": 0.0, "aAcc": 0.0})
    train.train_and_evaluate(c, tmp_path)
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [2, 4]  # the best (mIoU 0.9) and the latest


def _augreg_npz(path, rng, d=32, depth=1, heads=2, grid=3):
    """A Google AugReg ViT checkpoint in its real key layout (official npz), tiny dims."""
    t, dh = "Transformer/", d // heads
    arr = {"embedding/kernel": (16, 16, 3, d), "embedding/bias": (d,), "cls": (1, 1, d),
           t + "posembed_input/pos_embedding": (1, 1 + grid * grid, d),
           t + "encoder_norm/scale": (d,), t + "encoder_norm/bias": (d,),
           "head/kernel": (d, 10), "head/bias": (10,)}
    for i in range(depth):
        e = f"{t}encoderblock_{i}/"
        m = e + "MultiHeadDotProductAttention_1/"
        for name in ("query", "key", "value"):
            arr[f"{m}{name}/kernel"], arr[f"{m}{name}/bias"] = (d, heads, dh), (heads, dh)
        arr[m + "out/kernel"], arr[m + "out/bias"] = (heads, dh, d), (d,)
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            arr[f"{e}{ln}/scale"], arr[f"{e}{ln}/bias"] = (d,), (d,)
        arr[e + "MlpBlock_3/Dense_0/kernel"], arr[e + "MlpBlock_3/Dense_0/bias"] = (d, 4 * d), (
            4 * d,)
        arr[e + "MlpBlock_3/Dense_1/kernel"], arr[e + "MlpBlock_3/Dense_1/bias"] = (4 * d, d), (
            d,)
    arrays = {k: rng.normal(size=s).astype(np.float32) for k, s in arr.items()}
    np.savez(path, **arrays)
    return arrays


def test_augreg_npz_initialises_the_backbone(tmp_path):
    from rankseg_jax.models.backbones import vit

    c = small_train_config()
    npz = _augreg_npz(tmp_path / "B_16.npz", np.random.default_rng(0))
    setup = _setup(c)
    params = train.pretrained_params(setup, str(tmp_path / "B_16.npz"))
    bb = params["backbone"]
    np.testing.assert_array_equal(bb["patch_embed"]["kernel"], npz["embedding/kernel"])
    q = npz["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"]
    np.testing.assert_array_equal(bb["layers"][0]["attn"]["query"]["kernel"], q.reshape(32, 32))
    out = npz["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel"]
    np.testing.assert_array_equal(bb["layers"][0]["attn"]["out"]["kernel"], out.reshape(32, 32))
    # The 3x3 AugReg grid is resampled (torch bicubic) to the config's 4x4 grid.
    want = vit.resize_pos_embed(npz["Transformer/posembed_input/pos_embedding"], (3, 3), (4, 4))
    np.testing.assert_allclose(bb["pos_embed"], want, atol=1e-5)
    # The head keeps its fresh (official-style random) initialisation.
    fresh = jax.device_get(ts.init_state(setup)["params"]["head"])
    for a, b in zip(jax.tree.leaves(params["head"]), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

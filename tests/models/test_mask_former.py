"""Mask2Former(+RankSeg) as a model of the library: RankSeg column ops, build, outputs,
batch-size invariance, jit and bf16, the -gt oracle, parameter counts, conversion errors,
export round trip, backbone-only Swin sources and the conversion CLI."""

import functools
import pickle
import subprocess
import sys

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import M2F_FIXTURES, ROOT, mask2former_fixture_config

import rankseg_jax
from configs import ade20k_mask2former, ade20k_panoptic
from rankseg_jax import checkpointing, convert, models
from rankseg_jax.convert import detectron2, engine
from rankseg_jax.convert.engine import CheckpointMismatch
from rankseg_jax.convert.tables import mask2former as tables
from rankseg_jax.rankseg import ranking

torch = pytest.importorskip("torch")
JIT_OPTS = {"xla_backend_optimization_level": 0}  # faster XLA:CPU compiles (tests only)


# ------------------------------------------------------------------ RankSeg column ops

def test_class_column_ops_by_definition():
    logits = jnp.arange(2 * 3 * 5, dtype=jnp.float32).reshape(2, 3, 5)  # K = 4, col 4 = void
    topk = jnp.array([[2, 0], [3, 1]])
    np.testing.assert_array_equal(ranking.with_no_object(topk, 4), [[2, 0, 4], [3, 1, 4]])
    g = ranking.gather_class_columns(logits, topk)
    np.testing.assert_array_equal(g, np.stack([np.asarray(logits)[0][:, [2, 0, 4]],
                                               np.asarray(logits)[1][:, [3, 1, 4]]]))
    back = ranking.scatter_class_columns(g, topk, 4)
    want = np.full((2, 3, 5), -100.0)
    want[0][:, [2, 0, 4]] = np.asarray(logits)[0][:, [2, 0, 4]]
    want[1][:, [3, 1, 4]] = np.asarray(logits)[1][:, [3, 1, 4]]
    np.testing.assert_array_equal(back, want)
    # One implementation: the row gather/scatter along another axis.
    np.testing.assert_array_equal(
        g, jnp.swapaxes(ranking.gather_ranked(jnp.swapaxes(logits, 1, 2),
                                              ranking.with_no_object(topk, 4)), 1, 2))
    present = jnp.array([[1, 0, 0, 1], [0, 0, 0, 0]])
    masked = np.asarray(ranking.mask_absent_classes(logits, present))
    assert (masked[0][:, [1, 2]] == -100).all() and (masked[1][:, :4] == -100).all()
    np.testing.assert_array_equal(masked[..., 4], np.asarray(logits)[..., 4])  # no object
    np.testing.assert_array_equal(masked[0][:, [0, 3]], np.asarray(logits)[0][:, [0, 3]])


# ------------------------------------------------------------------ tiny models

def _tiny(run: str, **model):
    c = mask2former_fixture_config(run)
    for key, value in model.items():
        c.model[key] = value
    helpers.validate(c)
    return c


@functools.cache
def _built(run: str, dtype: str = "float32"):
    """(graphdef, state) of a randomly initialised tiny model and a jitted forward."""
    model = models.build_model(_tiny(run, dtype=dtype))
    graph, state = nnx.split(model)

    @functools.partial(jax.jit, compiler_options=JIT_OPTS,
                       static_argnames=("intermediates",))
    def fwd(st, x, gt=None, intermediates=False):
        return nnx.merge(graph, st)(x, gt_present=gt, return_intermediates=intermediates)

    return model, state, fwd


def _images(b: int, h: int = 40, w: int = 56, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, h, w, 3)), jnp.float32)


def test_outputs_batch_invariance_and_gt_free_inference():
    """RankSeg model: documented shapes, the ranking and class-order logits agree, each
    image alone gives its batch output, ground truth changes nothing (it takes none)."""
    model, state, fwd = _built("sem_rankseg")
    x = _images(2)  # 40 x 56: padded to 64 x 64 by the model
    out = fwd(state, x)
    k, q = 12, 10
    assert out["class_logits"].shape == (5, 2, q, k + 1)  # kappa = K = 12
    assert out["mask_logits"].shape == (5, 2, q, 16, 16)
    assert out["class_logits_full"].shape == (2, q, k + 1)
    assert out["image_logits"].shape == (2, k) and out["topk_index"].dtype == jnp.int32
    np.testing.assert_array_equal(out["topk_index"],
                                  jnp.argsort(-out["image_logits"], axis=1))
    np.testing.assert_array_equal(
        out["class_logits_full"],
        ranking.scatter_class_columns(out["class_logits"][-1], out["topk_index"], k))
    # Each image alone (explicitly pre-padded: padding is part of the model, so the same).
    padded = jnp.pad(x, ((0, 0), (0, 24), (0, 8), (0, 0)))
    for b in range(2):
        one = fwd(state, padded[b:b + 1])
        for name in ("class_logits", "mask_logits"):
            np.testing.assert_allclose(one[name][:, 0], out[name][:, b], atol=2e-5,
                                       err_msg=name)
        np.testing.assert_allclose(one["class_logits_full"][0], out["class_logits_full"][b],
                                   atol=2e-5)
        np.testing.assert_array_equal(one["topk_index"][0], out["topk_index"][b])
    with_gt = fwd(state, x, jnp.ones((2, k), bool))
    np.testing.assert_array_equal(with_gt["class_logits_full"], out["class_logits_full"])


def test_kappa_below_k_and_bf16():
    c = _tiny("sem_rankseg")
    c.model.rankseg.topk = 5
    helpers.validate(c)
    model = models.build_model(c)
    out = nnx.jit(lambda m, x: m(x))(model, _images(1))
    assert out["class_logits"].shape[-1] == 6 and model.ml_norm.scale.shape == (6,)
    full = np.asarray(out["class_logits_full"])
    assert ((full == -100).sum(-1) == 7).all() and (full[..., -1] != -100).all()
    # bf16 compute (params stay float32): same structure, logits close to float32.
    model32, state32, fwd32 = _built("sem_plain")
    _, state16, fwd16 = _built("sem_plain", "bfloat16")
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(model32, nnx.Param)))
    a, b = fwd32(state32, _images(1)), fwd16(state16, _images(1))
    assert b["class_logits"].dtype == jnp.float32
    assert np.abs(np.asarray(a["class_logits"]) - np.asarray(b["class_logits"])).max() < 0.5


def test_gt_oracle_masks_the_final_prediction_only():
    model, state, fwd = _built("sem_gt")
    x = _images(2, seed=1)
    present = np.zeros((2, 12), bool)
    present[0, [1, 5]] = True
    present[1, [0, 2, 11]] = True
    out = fwd(state, x, jnp.asarray(present), intermediates=True)
    raw = np.asarray(out["intermediates"]["decoder_class_logits"])
    final = np.asarray(out["class_logits"][-1])
    np.testing.assert_array_equal(final, np.asarray(out["class_logits_full"]))
    for b in range(2):
        assert (final[b][:, :12][:, ~present[b]] == -100).all()
        np.testing.assert_array_equal(final[b][:, :12][:, present[b]],
                                      raw[-1, b][:, :12][:, present[b]])
    np.testing.assert_array_equal(final[..., 12], raw[-1, ..., 12])  # no object untouched
    np.testing.assert_array_equal(np.asarray(out["class_logits"][:-1]), raw[:-1])  # aux raw
    with pytest.raises(ValueError, match="gt_present"):
        model(x)


# ------------------------------------------------------------------ full size

@pytest.mark.slow
def test_full_size_param_counts_match_official():
    """The ADE20K Swin-L configs, built abstractly: total and per-module parameter counts of
    the official models (fixture manifest, counted on the built official models), and the
    detectron2 table maps every parameter once."""
    import json

    counts = json.loads((M2F_FIXTURES / "manifest.json").read_text())["official_param_counts"]
    groups = {"backbone": ("backbone",), "sem_seg_head": ("pixel_decoder", "predictor"),
              "ml_head": ("ml_head",), "ml_norm": ("ml_norm",)}
    seen = {}
    for name, entry in sorted(counts.items()):
        module = ade20k_panoptic if "panoptic" in name else ade20k_mask2former
        variant = "rankseg" if name.endswith("-rankseg.yaml") else "gt" if name.endswith(
            "-gt.yaml") else ""
        config = module.get_config(variant)
        key = (module.__name__, variant if variant != "gt" or "panoptic" not in name else "")
        if key not in seen:
            shapes = engine.param_shapes(nnx.eval_shape(lambda c=config: models.build_model(c)))
            assert sorted(map(str, shapes)) == sorted(str(r.path)
                                                      for r in tables.model_rows(config))
            seen[key] = shapes
        shapes = seen[key]
        assert config.model.mask2former.num_queries == entry["num_queries"], name
        total = sum(int(np.prod(s)) for s in shapes.values())
        assert total == entry["total_params"], name
        for module_name, count in entry["per_module"].items():
            ours = sum(int(np.prod(s)) for p, s in shapes.items()
                       if p[0] in groups[module_name])
            assert ours == count, (name, module_name)
    assert seen[("configs.ade20k_mask2former", "rankseg")] is not None
    assert [counts[k]["total_params"] for k in sorted(counts)] == [
        215539979, 218978872, 215539979, 215488779, 218927672, 215488779]


# ------------------------------------------------------------------ conversion

def _official(weights: str) -> dict:
    return detectron2.read_detectron2_checkpoint(M2F_FIXTURES / f"{weights}.pth")


def _expected(config) -> dict:
    return engine.param_shapes(nnx.eval_shape(lambda: models.build_model(config)))


def test_bad_checkpoints_name_the_keys():
    config = _tiny("sem_rankseg")
    expected = _expected(config)
    sd = _official("rankseg")
    bad = dict(sd)
    del bad["ml_head.fc.W"]
    bad["sem_seg_head.predictor.extra.weight"] = np.zeros(3, np.float32)
    bad["ml_norm.weight"] = np.zeros(7, np.float32)
    with pytest.raises(CheckpointMismatch) as e:
        tables.convert_state_dict(bad, config, expected)
    msg = str(e.value)
    for needle in ("ml_head/fc/kernel <- ml_head.fc.W", "sem_seg_head.predictor.extra.weight",
                   "ml_norm.weight -> ml_norm/scale: (7,) vs model (13,)"):
        assert needle in msg, (needle, msg)
    # A plain checkpoint for a RankSeg config: the ML head is missing, the bias unused.
    with pytest.raises(CheckpointMismatch, match=r"ml_head/cls_emb <- ml_head\.cls_emb") as e:
        tables.convert_state_dict(_official("plain"), config, expected)
    assert "sem_seg_head.predictor.class_embed.bias" in str(e.value)
    # A Segmenter config cannot take a detectron2 checkpoint (and vice versa).
    with pytest.raises(CheckpointMismatch, match="model.arch='segmenter'"):
        convert.read_checkpoint(M2F_FIXTURES / "plain.pth", helpers.tiny_config(), None)
    with pytest.raises(CheckpointMismatch, match="model.arch='mask2former'"):
        convert.read_checkpoint(helpers.FIXTURES / "rankseg.pth", config, expected)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pkl_sources(tmp_path):
    """A model-zoo style `.pkl` of numpy arrays converts like the `.pth`; one naming a
    callable is refused before anything runs."""
    config = _tiny("sem_rankseg")
    expected = _expected(config)
    sd = _official("rankseg")
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": sd, "__author__": "test"}, f)
    from_pkl, report = convert.read_checkpoint(path, config, expected)
    from_pth, _ = convert.read_checkpoint(M2F_FIXTURES / "rankseg.pth", config, expected)
    assert report.format == "detectron2" and from_pkl.keys() == from_pth.keys()
    assert all(np.array_equal(from_pkl[k], from_pth[k]) for k in from_pth)
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"x": _Evil()}}, f)
    with pytest.raises(detectron2.UnsafePickleError, match="builtins.print"):
        convert.read_checkpoint(evil, config, expected)


def test_export_reimport_exact(tmp_path):
    config = _tiny("sem_rankseg")
    model = nnx.eval_shape(lambda: models.build_model(config))
    convert.load_pretrained(model, M2F_FIXTURES / "rankseg.pth", config)
    path = tmp_path / "export.pth"
    convert.export_official(model, config, path)
    back = torch.load(path, weights_only=True)["model"]
    orig = torch.load(M2F_FIXTURES / "rankseg.pth", weights_only=True)["model"]
    assert list(back) == list(orig)  # official keys, official order, buffers included
    for k in orig:
        assert back[k].dtype == orig[k].dtype and torch.equal(back[k], orig[k]), k
    again = nnx.eval_shape(lambda: models.build_model(config))
    convert.load_pretrained(again, path, config)
    a, b = engine.model_params(model), engine.model_params(again)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _imagenet_swin(sd: dict) -> dict:
    """The fixture backbone in the layout of the original Swin ImageNet release: no prefix,
    no per-stage norms, a final norm and classifier head."""
    out = {k[len("backbone."):]: v for k, v in sd.items()
           if k.startswith("backbone.") and not k.startswith("backbone.norm")}
    out.update({"norm.weight": np.ones(256, np.float32), "norm.bias": np.zeros(256, np.float32),
                "head.weight": np.zeros((5, 256), np.float32),
                "head.bias": np.zeros(5, np.float32)})
    return out


def test_imagenet_swin_backbone_only(tmp_path):
    config = _tiny("sem_rankseg")
    sd = _official("rankseg")
    path = tmp_path / "swin_imagenet.pth"
    torch.save({"model": {k: torch.from_numpy(np.asarray(v))
                          for k, v in _imagenet_swin(sd).items()}}, path)
    expected = _expected(config)
    with pytest.raises(CheckpointMismatch, match="allow_partial"):
        convert.read_checkpoint(path, config, expected)
    params, report = convert.read_checkpoint(path, config, expected, allow_partial=None)
    assert report.format == "swin" and sorted(report.ignored)[-2:] == ["norm.bias",
                                                                        "norm.weight"]
    assert all(p[0] == "backbone" for p in params) and len(params) == len(
        [p for p in expected if p[0] == "backbone"]) - 8  # norm0..3 keep their init
    full, _ = tables.convert_state_dict(sd, config, expected)
    assert all(np.array_equal(params[p], full[p]) for p in params)
    # Another window: the bias tables are resized (torch bicubic), the rest is unchanged.
    c7 = _tiny("sem_rankseg")
    c7.model.swin.window_size = 7
    params7, report7 = convert.read_checkpoint(path, c7, _expected(c7), allow_partial=True)
    assert len(report7.resized) == 8 and params7[(
        "backbone", "layers", 0, "blocks", 0, "attn", "relative_position_bias_table")].shape == (
        169, 1)
    # resolve_params / load_model: head params keep the fresh init, backbone from the file.
    _, loaded = rankseg_jax.load_model(path, config)
    got = engine.model_params(loaded)
    fresh = jax.device_get(models.init_params(config))
    np.testing.assert_array_equal(got[("backbone", "patch_embed", "proj", "kernel")],
                                  params[("backbone", "patch_embed", "proj", "kernel")])
    np.testing.assert_array_equal(got[("predictor", "query_feat")],
                                  fresh["predictor"]["query_feat"])


@pytest.mark.slow
def test_cli_convert_and_reverse(tmp_path):
    cfg_file = tmp_path / "tiny_m2f.py"
    cfg_file.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from helpers import mask2former_fixture_config\n\n"
        "def get_config():\n    return mask2former_fixture_config('sem_rankseg')\n")
    out_dir, pth = tmp_path / "converted", tmp_path / "back.pth"
    run = [sys.executable, "-m", "rankseg_jax.convert", f"--config={cfg_file}"]
    proc = subprocess.run(run + [f"--src={M2F_FIXTURES / 'rankseg.pth'}", f"--out={out_dir}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert checkpointing.read_metadata(out_dir)["format"] == "detectron2"
    proc = subprocess.run(run + ["--reverse", f"--src={out_dir}", f"--out={pth}"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    back = torch.load(pth, weights_only=True)["model"]
    orig = torch.load(M2F_FIXTURES / "rankseg.pth", weights_only=True)["model"]
    assert list(back) == list(orig) and all(torch.equal(back[k], orig[k]) for k in orig)

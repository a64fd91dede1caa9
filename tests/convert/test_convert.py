"""Weight conversion: every source format against an independent forward, round trips, CLI.

Sources are written in their real container formats with the real key layouts (tiny dims):
official mmseg `.pth` (all variants, checked against the NumPy float64 reference), original
Segmenter `{'model': ...}` and timm `.pth`/`.bin`/`.safetensors` (checked against small torch
models written here), Google AugReg `.npz` (converted to torch by the rules of the official
`load_weights_from_npz`, written independently here). Export -> reload is exact and
reproduces the official fixtures.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import FIXTURES, ROOT, tiny_config

from rankseg_jax import checkpointing, models
from rankseg_jax.convert import (
    CheckpointMismatch,
    engine,
    export_official,
    formats,
    load_pretrained,
    torch_io,
)
from rankseg_jax.convert.tables import mmseg
from tests.reference import numpy_ref as R
from tests.reference.random_official_sd import KINDS, config_for_kind, make_state_dict

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
ATOL = 1e-4
D, DEPTH, HEADS, N_CLS = 64, 2, 2, 20


def _nhwc(images_nchw):
    return np.ascontiguousarray(np.asarray(images_nchw, np.float32).transpose(0, 2, 3, 1))


def _images(seed=0, shape=(2, 3, 64, 64)):
    return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)


# ------------------------------------------------------------------ independent torch models

class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """timm / Segmenter pre-norm block (norm1, attn.qkv, attn.proj, norm2, mlp.fc1/fc2)."""

    def __init__(self, d, heads, hidden, eps):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.attn, self.mlp = Attention(d, heads), Mlp(d, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, d, p):
        super().__init__()
        self.proj = nn.Conv2d(3, d, p, p)


class TorchViT(nn.Module):
    """timm `VisionTransformer` key layout (+ classifier `head`, which conversion drops)."""

    def __init__(self, grid, eps, d=D, depth=DEPTH, heads=HEADS):
        super().__init__()
        self.patch_embed = PatchEmbed(d, 16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, d))
        self.blocks = nn.ModuleList([Block(d, heads, 4 * d, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(d, eps=eps)
        self.head = nn.Linear(d, 10)

    def forward(self, img, pos_embed=None):
        """Returns the patch grid [B, h, w, D] after the final norm (pos_embed must fit)."""
        x = self.patch_embed.proj(img)
        b, d, h, w = x.shape
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], 1)
        x = x + (self.pos_embed if pos_embed is None else pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 1:].reshape(b, h, w, d)


class MaskTransformer(nn.Module):
    """rstrudel/segmenter decoder (`decoder.*` keys)."""

    def __init__(self, n_cls, d=D, n_layers=2, heads=HEADS):
        super().__init__()
        self.n_cls = n_cls
        self.blocks = nn.ModuleList([Block(d, heads, 4 * d, 1e-5) for _ in range(n_layers)])
        self.cls_emb = nn.Parameter(torch.zeros(1, n_cls, d))
        self.proj_dec = nn.Linear(d, d)
        self.proj_patch = nn.Parameter(torch.zeros(d, d))
        self.proj_classes = nn.Parameter(torch.zeros(d, d))
        self.decoder_norm = nn.LayerNorm(d)
        self.mask_norm = nn.LayerNorm(n_cls)

    def forward(self, grid):
        b, h, w, d = grid.shape
        x = self.proj_dec(grid.reshape(b, h * w, d))
        x = torch.cat([x, self.cls_emb.expand(b, -1, -1)], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        patches = F.normalize(x[:, :-self.n_cls] @ self.proj_patch, dim=-1)
        classes = F.normalize(x[:, -self.n_cls:] @ self.proj_classes, dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))
        return masks.reshape(b, h, w, self.n_cls).permute(0, 3, 1, 2)


class TorchSegmenter(nn.Module):
    def __init__(self, grid):
        super().__init__()
        self.encoder = TorchViT(grid, eps=1e-5)
        self.decoder = MaskTransformer(N_CLS)

    def forward(self, img):
        return self.decoder(self.encoder(img))


def randomize(module, seed):
    """Distinct, well-scaled random values for every parameter (float64)."""
    g = torch.Generator().manual_seed(seed)
    module.double()

    def normal(p, std, mean=0.0):
        p.copy_(mean + std * torch.randn(p.shape, generator=g, dtype=p.dtype))

    with torch.no_grad():
        norms = {id(m.weight) for m in module.modules() if isinstance(m, nn.LayerNorm)}
        for name, p in module.named_parameters():
            if id(p) in norms:
                normal(p, 0.25, 1.0)
            elif p.ndim == 1:
                normal(p, 0.1)
            elif name.endswith(("cls_token", "pos_embed")):
                normal(p, 0.5)
            elif name.endswith("cls_emb"):
                normal(p, 1.0)
            elif name.endswith(("proj_patch", "proj_classes")):
                normal(p, p.shape[0] ** -0.5)
            else:
                normal(p, p[0].numel() ** -0.5)
    return module


def torch_resize_pos(pos, grid):
    """Official init-time pos-embed resize (`VisionTransformer.resize_pos_embed`), torch bicubic."""
    g0 = int(round((pos.shape[1] - 1) ** 0.5))
    body = pos[:, 1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    body = F.interpolate(body, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], body.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], 1)


def f32_sd(module):
    return {k: v.detach().float().contiguous() for k, v in module.state_dict().items()}


def ours(config, path, **kw):
    model = models.build_model(config)
    report = load_pretrained(model, path, config, **kw)
    return model, report


# ------------------------------------------------------------------ official mmseg variants

def _variant(kind):
    """(our config, reference config) for a random official-format state dict of `kind`."""
    base = "baseline" if kind.startswith("baseline") else "rankseg"
    cfg = tiny_config(base)
    h = cfg.model.head
    ref = R.RefConfig(n_layers=3 if base == "rankseg" else 2, tran_dec_ff=128,
                      tran_dec_heads=8, tran_dec_pe_size=2)
    if kind.endswith("_oce"):
        cfg.model.vit.oce = True
    if kind in ("tran_dec", "gap_linear"):
        r = cfg.model.rankseg
        r.ml_encoder, h.n_layers = kind, 2
        r.dec_num_heads, r.dec_d_ff, r.dec_layers = 8, 128, 2
        ref = ref.replace(n_layers=2)
    return cfg, config_for_kind(ref, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_official_variants_forward_and_roundtrip(kind, tmp_path):
    cfg, ref_cfg = _variant(kind)
    sd = {k: v.astype(np.float32) for k, v in
          make_state_dict(ref_cfg, np.random.default_rng(1), kind).items()}
    src = tmp_path / f"{kind}.pth"
    torch_io.write_pth(src, sd, {"iter": 1})
    model, report = ours(cfg, src)
    assert report.format == "mmseg" and not report.missing and not report.unused

    images = _images(2, (2, 3, 48, 64))  # 3x4 grid: runtime pos-embed resize too
    ref = R.model_forward({k: v.astype(np.float64) for k, v in sd.items()},
                          images.astype(np.float64), ref_cfg)
    out = model(_nhwc(images), full_logits=True)
    np.testing.assert_allclose(np.asarray(out["patch_grid"]).transpose(0, 3, 1, 2),
                               ref["backbone"]["feat"], atol=ATOL)
    np.testing.assert_allclose(out["full_logits"], ref["logits"], atol=ATOL)
    if ref_cfg.head == "rankseg":
        np.testing.assert_allclose(out["image_logits"], ref["head"]["img_pred"], atol=ATOL)

    # Flax -> PyTorch: exactly the official keys, order, shapes and values (strict load).
    dst = tmp_path / "exported.pth"
    exported = export_official(model, cfg, dst)
    assert list(exported) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(exported[k], sd[k], err_msg=k)
    # PyTorch -> Flax: bit-exact params.
    again, _ = ours(cfg, dst)
    a, b = engine.model_params(model), engine.model_params(again)
    assert a.keys() == b.keys()
    for p in a:
        np.testing.assert_array_equal(a[p], b[p])


def test_fixture_export_reproduces_official_outputs(tmp_path):
    io = dict(np.load(FIXTURES / "io.npz"))
    cfg = tiny_config("rankseg")
    model, _ = ours(cfg, FIXTURES / "rankseg.pth")
    dst = tmp_path / "rankseg_export.pth"
    export_official(model, cfg, dst)
    ckpt = torch.load(dst, weights_only=True)
    assert set(ckpt) == {"state_dict", "meta"}
    orig = torch.load(FIXTURES / "rankseg.pth", weights_only=True)["state_dict"]
    assert list(ckpt["state_dict"]) == list(orig)
    assert all(torch.equal(ckpt["state_dict"][k], orig[k]) for k in orig)

    reloaded, _ = ours(cfg, dst)
    out = reloaded(_nhwc(io["images"]), train=True, full_logits=True)
    np.testing.assert_allclose(np.asarray(out["patch_grid"]).transpose(0, 3, 1, 2),
                               io["rankseg.backbone_out1"], atol=ATOL)
    np.testing.assert_allclose(out["image_logits"], io["rankseg.head_train_img_pred"],
                               atol=ATOL)
    np.testing.assert_allclose(out["mask_logits"], io["rankseg.head_train_masks"], atol=ATOL)
    np.testing.assert_allclose(out["full_logits"], io["rankseg.head_eval_full_masks"],
                               atol=ATOL)


# ------------------------------------------------------------------ timm, npz, Segmenter

@pytest.fixture(scope="module")
def timm_vit():
    return randomize(TorchViT(grid=3, eps=1e-6), seed=3)  # source grid 3 != config grid 4


def _timm_reference(vit, images, grid=4):
    with torch.no_grad():
        pos = torch_resize_pos(vit.pos_embed, grid)
        return vit(torch.from_numpy(images).double(), pos).numpy()


def test_timm_containers_backbone(timm_vit, tmp_path):
    from safetensors.torch import save_file

    sd = f32_sd(timm_vit)
    paths = {"pth": tmp_path / "vit.pth", "bin": tmp_path / "pytorch_model.bin",
             "safetensors": tmp_path / "vit.safetensors"}
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3},
               paths["pth"])
    torch.save({"module." + k: v for k, v in sd.items()}, paths["bin"])
    save_file(sd, str(paths["safetensors"]))
    cfg = tiny_config("baseline")
    with pytest.raises(CheckpointMismatch, match="missing keys"):
        ours(cfg, paths["pth"])  # backbone-only source without allow_partial

    params = {}
    for name, path in paths.items():
        model, report = ours(cfg, path, allow_partial=True)
        assert report.format == "timm"
        assert "head.weight" in report.ignored and "head.bias" in report.ignored
        assert report.resized and not report.unused
        assert all(m.startswith("head/") for m in report.missing)
        params[name] = engine.model_params(model)
    for name in ("bin", "safetensors"):
        for p in params["pth"]:
            np.testing.assert_array_equal(params[name][p], params["pth"][p])

    images = _images(4)
    grid, _ = model.backbone(_nhwc(images))
    np.testing.assert_allclose(grid, _timm_reference(timm_vit, images), atol=ATOL)


def _npz_from_torch(vit, prefix="opt/target/"):
    """Google AugReg layout from a timm-layout torch ViT (the inverse of the official
    `load_weights_from_npz`, written here)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in vit.state_dict().items()}
    d, h = D, HEADS
    dh = d // h
    t = "Transformer/"
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
           t + "posembed_input/pos_embedding": sd["pos_embed"],
           t + "encoder_norm/scale": sd["norm.weight"], t + "encoder_norm/bias": sd["norm.bias"],
           "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"],
           "pre_logits/kernel": np.eye(d, dtype=np.float32)}
    for i in range(DEPTH):
        e, b = f"{t}encoderblock_{i}/", f"blocks.{i}."
        m = e + "MultiHeadDotProductAttention_1/"
        out[e + "LayerNorm_0/scale"], out[e + "LayerNorm_0/bias"] = (sd[b + "norm1.weight"],
                                                                    sd[b + "norm1.bias"])
        out[e + "LayerNorm_2/scale"], out[e + "LayerNorm_2/bias"] = (sd[b + "norm2.weight"],
                                                                    sd[b + "norm2.bias"])
        w, bias = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            out[f"{m}{name}/kernel"] = w[j * d:(j + 1) * d].T.reshape(d, h, dh)
            out[f"{m}{name}/bias"] = bias[j * d:(j + 1) * d].reshape(h, dh)
        out[m + "out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(h, dh, d)
        out[m + "out/bias"] = sd[b + "attn.proj.bias"]
        for j, fc in enumerate(("fc1", "fc2")):
            out[f"{e}MlpBlock_3/Dense_{j}/kernel"] = sd[f"{b}mlp.{fc}.weight"].T
            out[f"{e}MlpBlock_3/Dense_{j}/bias"] = sd[f"{b}mlp.{fc}.bias"]
    return {prefix + k: v for k, v in out.items()}


def test_npz_backbone(timm_vit, tmp_path):
    src = tmp_path / "augreg.npz"
    np.savez(src, **_npz_from_torch(timm_vit))
    cfg = tiny_config("rankseg")
    model, report = ours(cfg, src, allow_partial=True)
    assert report.format == "npz" and report.resized and not report.unused
    assert {"head/kernel", "head/bias", "pre_logits/kernel"} <= set(report.ignored)
    images = _images(5)
    grid, _ = model.backbone(_nhwc(images))
    np.testing.assert_allclose(grid, _timm_reference(timm_vit, images), atol=ATOL)

    bad = tiny_config("rankseg", heads=4)
    with pytest.raises(CheckpointMismatch, match="attention heads"):
        ours(bad, src, allow_partial=True)


def test_segmenter_checkpoint_full_model(tmp_path):
    seg = randomize(TorchSegmenter(grid=4), seed=7)
    src = tmp_path / "checkpoint.pth"
    torch.save({"model": f32_sd(seg), "optimizer": {"state": {}, "param_groups": []},
                "epoch": 10, "n_cls": N_CLS}, src)
    cfg = tiny_config("baseline")
    with pytest.raises(CheckpointMismatch, match="ln_eps=1e-5"):
        ours(cfg, src)
    cfg.model.vit.ln_eps = 1e-5
    model, report = ours(cfg, src)
    assert report.format == "segmenter" and not report.missing
    assert "encoder.head.weight" in report.ignored
    images = _images(6)
    out = model(_nhwc(images), full_logits=True)
    with torch.no_grad():
        ref = seg(torch.from_numpy(images).double()).numpy()
    np.testing.assert_allclose(out["full_logits"], ref, atol=ATOL)

    rank = tiny_config("rankseg")  # other head: backbone only with --reset-head
    rank.model.vit.ln_eps = 1e-5
    with pytest.raises(CheckpointMismatch, match="reset_head"):
        ours(rank, src)
    model2, report2 = ours(rank, src, reset_head=True)
    assert report2.dropped and all(k.startswith("decoder.") for k in report2.dropped)
    grid, _ = model2.backbone(_nhwc(images))
    np.testing.assert_allclose(grid, np.asarray(out["patch_grid"]), atol=1e-6)


# ------------------------------------------------------------------ reports and errors

def test_unused_and_missing_keys_reported(tmp_path):
    sd = torch_io.read_pth(FIXTURES / "baseline.pth")
    sd["backbone.extra_token"] = np.zeros((1, 1, D), np.float32)
    del sd["backbone.layers.1.ln2.bias"]
    src = tmp_path / "broken.pth"
    torch_io.write_pth(src, sd)
    cfg = tiny_config("baseline")
    with pytest.raises(CheckpointMismatch) as err:
        ours(cfg, src)
    msg = str(err.value)
    assert "backbone.extra_token" in msg and "backbone.layers.1.ln2.bias" in msg
    with pytest.raises(CheckpointMismatch, match="unused keys"):
        ours(cfg, src, allow_partial=True)  # unused keys are an error even when partial
    del sd["backbone.extra_token"]
    torch_io.write_pth(src, sd)
    _, report = ours(cfg, src, allow_partial=True)
    assert report.missing == ["backbone/layers/1/norm2/bias <- backbone.layers.1.ln2.bias"]


def test_mismatch_message_is_summarised(tmp_path):
    """A wrong-model checkpoint gives counts and the first 10 keys of each kind (the full
    lists in .details), not every key on one line."""
    sd = torch_io.read_pth(FIXTURES / "baseline.pth")
    extra = {f"unrelated.block{i}.weight": np.zeros(2, np.float32) for i in range(40)}
    src = tmp_path / "other.pth"
    torch_io.write_pth(src, {**{k: v for k, v in sd.items() if "layers.1." not in k}, **extra})
    with pytest.raises(CheckpointMismatch) as err:
        ours(tiny_config("baseline"), src)
    msg, details = str(err.value), err.value.details
    assert len(details["unused keys"]) == 40 and len(details["missing keys"]) > 10
    unused = details["unused keys"]
    assert f"unused keys (40): {', '.join(unused[:10])}, ... and 30 more" in msg
    assert all(k not in msg for k in unused[10:])
    n_missing = len(details["missing keys"])
    assert f"missing keys ({n_missing})" in msg and f"and {n_missing - 10} more" in msg
    assert len(msg) < 2500


def test_class_count_mismatch_and_reset_head():
    cfg = tiny_config("rankseg", num_classes=12)
    with pytest.raises(CheckpointMismatch, match="reset_head"):
        ours(cfg, FIXTURES / "rankseg.pth")
    model, report = ours(cfg, FIXTURES / "rankseg.pth", reset_head=True)
    assert report.reset and all(p.startswith("head/") for p in report.reset)
    assert report.dropped and all(k.startswith("decode_head.") for k in report.dropped)
    fresh = engine.model_params(models.build_model(cfg))
    loaded = engine.model_params(model)
    for p in fresh:
        if p[0] == "head":
            np.testing.assert_array_equal(loaded[p], fresh[p])
    io = np.load(FIXTURES / "io.npz")
    grid, _ = model.backbone(_nhwc(io["images"]))
    np.testing.assert_allclose(np.asarray(grid).transpose(0, 3, 1, 2),
                               io["rankseg.backbone_out1"], atol=ATOL)


def test_detect_format_and_gt_head():
    assert formats.detect_format({"backbone.cls_token": 0}) == "mmseg"
    assert formats.detect_format({"encoder.patch_embed.proj.weight": 0}) == "segmenter"
    assert formats.detect_format({"patch_embed.proj.weight": 0,
                                  "blocks.0.attn.qkv.weight": 0}) == "timm"
    assert formats.detect_format({"embedding/kernel": 0}) == "npz"
    with pytest.raises(CheckpointMismatch, match="--format"):
        formats.detect_format({"foo": 0})
    with pytest.raises(CheckpointMismatch, match="GT"):
        mmseg.check_official_variant({"decode_head.mask_norm.gamma": 0}, "x")


# ------------------------------------------------------------------ CLI

def test_cli_params_dir_and_reverse(tmp_path):
    cfg_file = tmp_path / "tiny_cfg.py"
    cfg_file.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from helpers import tiny_config\n\n"
        "def get_config():\n    return tiny_config('rankseg')\n")
    out_dir, saved_dir = tmp_path / "converted", tmp_path / "saved"
    cfg = tiny_config("rankseg")
    direct, _ = ours(cfg, FIXTURES / "rankseg.pth")
    checkpointing.save_params(saved_dir, checkpointing.params_tree(direct), {"note": "test"})
    pth = tmp_path / "back.pth"
    run = [sys.executable, "-m", "rankseg_jax.convert", f"--config={cfg_file}"]
    # Both directions at once (independent inputs) to keep the wall time down.
    procs = [subprocess.Popen(run + [f"--src={FIXTURES / 'rankseg.pth'}", f"--out={out_dir}",
                                     "--allow-partial"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT),
             subprocess.Popen(run + ["--reverse", f"--src={saved_dir}", f"--out={pth}"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)]
    for proc in procs:
        log = proc.communicate()[0].decode()
        assert proc.returncode == 0, log[-3000:]

    meta = checkpointing.read_metadata(out_dir)
    assert meta["format"] == "mmseg" and len(meta["sha256"]) == 64
    assert meta["allow_partial"] is True
    restored = models.build_model(cfg)
    checkpointing.restore_params_into(restored, out_dir)
    images = _nhwc(np.load(FIXTURES / "io.npz")["images"])
    a, b = restored(images, full_logits=True), direct(images, full_logits=True)
    for key in ("full_logits", "image_logits", "patch_grid"):
        np.testing.assert_array_equal(a[key], b[key])

    back = torch.load(pth, weights_only=True)["state_dict"]
    orig = torch.load(FIXTURES / "rankseg.pth", weights_only=True)["state_dict"]
    assert list(back) == list(orig) and all(torch.equal(back[k], orig[k]) for k in orig)

"""Random state dicts with the exact official (mmseg) key names and shapes.

Follows the official state dicts (key order as `state_dict()` lists it). ``make_state_dict(cfg,
rng, kind)`` mimics the fixture's random
scheme (fixtures README, "Random weights"): weights N(0, 1/fan_in), biases N(0, 0.1²), LayerNorm
weight 1+N(0, 0.25²) / bias N(0, 0.1²), ``cls_token``/``pos_embed`` N(0, 0.5²), ``cls_emb``
N(0, 1), ``proj_patch``/``proj_classes``/GroupWiseLinear ``W`` N(0, 1/d). Values are float64
numpy arrays; keys are in ``named_parameters()`` order (the official order).

Kinds:
  'baseline'      MaskTransformerHead (`MaskTransformerHead`, the baseline state dict): n_layers
  blocks, mask_norm (N)
  'rankseg'       MaskTransformerRankSegHead (`MaskTransformerRankSegHead`, the RankSeg state
  dict): + decoder_norm2, ml_fc, mask_norm (K)
  'rankseg_oce'   RankSeg with backbone class tokens (the OCE variant `with_cls_emb`, the variant
  state dicts): ``backbone.cls_emb`` and no
                  ``decode_head.cls_emb``
  'baseline_oce'  baseline with backbone class tokens (the variant state dicts)
  'tran_dec'      2×TranDec ablation (`RankSegDecoderHead`, the variant state dicts): outer head
  without decoder_norm2/ml_fc, plus
                  ``img_cls_head.*`` (incl. the fixed ``position_embedding.pe`` buffer)
  'gap_linear'    global-pooling ablation (`RankSegGlobalPoolingHead`, the variant state dicts):
  outer head + ``img_cls_head.{1.conv,2}.*``

The matching forward config is ``config_for_kind(cfg, kind)`` (sets head / img_head / oce).
"""

from __future__ import annotations

import numpy as np

from .numpy_ref import RefConfig, sine_position_buffer

KINDS = ("baseline", "rankseg", "rankseg_oce", "baseline_oce", "tran_dec", "gap_linear")


def config_for_kind(cfg: RefConfig, kind: str) -> RefConfig:
    """Return ``cfg`` with head / img_head / oce switches matching ``kind``."""
    if kind not in KINDS:
        raise ValueError(kind)
    head = "segmenter" if kind.startswith("baseline") else "rankseg"
    img_head = kind if kind in ("tran_dec", "gap_linear") else "tran_enc"
    return cfg.replace(head=head, img_head=img_head, oce=kind.endswith("_oce"))


def make_state_dict(cfg: RefConfig, rng: np.random.Generator, kind: str = "baseline",
                    pos_grid: int | None = None) -> dict[str, np.ndarray]:
    """Random official-format state dict (float64).

    Args:
      cfg: dims (embed_dim C, num_layers, mlp_ratio, patch_size, in_channels, n_cls N,
        d_model d, d_ff, n_layers, topk K, tran_dec_ff, tran_dec_layers, tran_dec_pe_size).
      rng: ``np.random.default_rng(seed)`` (anything with ``normal(loc, scale, size)``).
      kind: one of :data:`KINDS`.
      pos_grid: stored pos-embed grid G (default ``cfg.pos_grid`` or 4), giving ``pos_embed``
        of shape (1, 1+G², C).
    """
    if kind not in KINDS:
        raise ValueError(kind)
    oce = kind.endswith("_oce") or cfg.oce
    C, d, N, K = cfg.embed_dim, cfg.d_model, cfg.n_cls, cfg.topk
    G = pos_grid or cfg.pos_grid or 4
    p, cin = cfg.patch_size, cfg.in_channels
    sd: dict[str, np.ndarray] = {}

    def w(key, shape, fan_in):
        sd[key] = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)

    def bias(key, n):
        sd[key] = rng.normal(0.0, 0.1, (n,))

    def lin(prefix, out_f, in_f):
        w(prefix + "weight", (out_f, in_f), in_f)
        bias(prefix + "bias", out_f)

    def ln(prefix, n):
        sd[prefix + "weight"] = 1.0 + rng.normal(0.0, 0.25, (n,))
        sd[prefix + "bias"] = rng.normal(0.0, 0.1, (n,))

    # ---- backbone (the baseline state dict) ----
    sd["backbone.cls_token"] = rng.normal(0.0, 0.5, (1, 1, C))
    sd["backbone.pos_embed"] = rng.normal(0.0, 0.5, (1, 1 + G * G, C))
    if oce:  # the variant state dicts: listed right after pos_embed
        sd["backbone.cls_emb"] = rng.normal(0.0, 1.0, (1, N, C))
    w("backbone.patch_embed.projection.weight", (C, cin, p, p), cin * p * p)
    bias("backbone.patch_embed.projection.bias", C)
    F = cfg.mlp_ratio * C
    for i in range(cfg.num_layers):
        pre = f"backbone.layers.{i}."
        ln(pre + "ln1.", C)
        w(pre + "attn.attn.in_proj_weight", (3 * C, C), C)
        bias(pre + "attn.attn.in_proj_bias", 3 * C)
        lin(pre + "attn.attn.out_proj.", C, C)
        ln(pre + "ln2.", C)
        lin(pre + "ffn.layers.0.0.", F, C)
        lin(pre + "ffn.layers.1.", C, F)
    ln("backbone.ln1.", C)

    # ---- decode head (the official state dicts) ----
    h = "decode_head."
    if not oce:
        sd[h + "cls_emb"] = rng.normal(0.0, 1.0, (1, N, d))
    sd[h + "proj_patch"] = rng.normal(0.0, 1.0 / np.sqrt(d), (d, d))
    sd[h + "proj_classes"] = rng.normal(0.0, 1.0 / np.sqrt(d), (d, d))
    for j in range(cfg.n_layers):
        pre = f"{h}blocks.{j}."
        ln(pre + "norm1.", d)
        ln(pre + "norm2.", d)
        lin(pre + "attn.qkv.", 3 * d, d)
        lin(pre + "attn.proj.", d, d)
        lin(pre + "mlp.fc1.", cfg.d_ff, d)
        lin(pre + "mlp.fc2.", d, cfg.d_ff)
    lin(h + "proj_dec.", d, C)
    ln(h + "decoder_norm.", d)
    if kind in ("rankseg", "rankseg_oce"):
        ln(h + "decoder_norm2.", d)
    ln(h + "mask_norm.", N if kind.startswith("baseline") else K)
    if kind in ("rankseg", "rankseg_oce"):
        sd[h + "ml_fc.W"] = rng.normal(0.0, 1.0 / np.sqrt(d), (1, N, d))
        sd[h + "ml_fc.b"] = rng.normal(0.0, 0.1, (1, N))
    elif kind == "tran_dec":
        # `RankSegDecoderHead` / the variant state dicts: hidden_dim must equal d, since query_pos
        # = decode_head.cls_emb
        ic = h + "img_cls_head."
        ff = cfg.tran_dec_ff
        for i in range(cfg.tran_dec_layers):
            lp = f"{ic}transformer.decoder.layers.{i}."
            w(lp + "multihead_attn.in_proj_weight", (3 * d, d), d)
            bias(lp + "multihead_attn.in_proj_bias", 3 * d)
            lin(lp + "multihead_attn.out_proj.", d, d)
            lin(lp + "linear1.", ff, d)
            lin(lp + "linear2.", d, ff)
            ln(lp + "norm2.", d)
            ln(lp + "norm3.", d)
        ln(ic + "transformer.decoder.norm.", d)
        sd[ic + "position_embedding.pe"] = sine_position_buffer(d, cfg.tran_dec_pe_size)
        w(ic + "input_proj.weight", (d, C, 1, 1), C)
        bias(ic + "input_proj.bias", d)
        sd[ic + "fc.W"] = rng.normal(0.0, 1.0 / np.sqrt(d), (1, N, d))
        sd[ic + "fc.b"] = rng.normal(0.0, 0.1, (1, N))
    elif kind == "gap_linear":  # `RankSegGlobalPoolingHead` / the variant state dicts
        ic = h + "img_cls_head."
        w(ic + "1.conv.weight", (C, C, 1, 1), C)
        bias(ic + "1.conv.bias", C)
        w(ic + "2.weight", (N, C, 1, 1), C)
        bias(ic + "2.bias", N)
    return sd

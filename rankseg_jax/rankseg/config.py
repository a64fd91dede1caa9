"""`RankSegConfig`: the RankSeg component's options, frozen, read once from the config."""

from __future__ import annotations

import dataclasses

import ml_collections as mlc


@dataclasses.dataclass(frozen=True)
class RankSegConfig:
    """Options of the RankSeg component (see `config.model.rankseg` in the schema).

    topk: kappa, classes kept per image. ml_encoder: `tran_enc` | `tran_dec` | `gap_linear`.
    downsample: pooled grid side of the pixel host's multi-label encoder input.
    temperature: `rank_adaptive` (per-rank affine) or `shared`. oracle: `none`,
    `train_eval` or `eval` (ground-truth classes ranked first). dynamic_k_threshold: keep
    ranks with sigmoid score >= threshold at inference (0 = static kappa).
    dec_*: the `tran_dec` encoder's heads, FFN width and layers.
    ml_hidden_dim, ml_read_layer, ml_dropout: Mask2Former's multi-label head (width, the
    decoder layer whose queries it reads, dropout).
    """

    topk: int = 50
    ml_encoder: str = "tran_enc"
    downsample: int = 8
    temperature: str = "rank_adaptive"
    oracle: str = "none"
    dynamic_k_threshold: float = 0.0
    dec_num_heads: int = 8
    dec_d_ff: int = 2048
    dec_layers: int = 2
    ml_hidden_dim: int = 512
    ml_read_layer: int = 2
    ml_dropout: float = 0.1

    @classmethod
    def from_config(cls, rankseg: mlc.ConfigDict) -> RankSegConfig | None:
        """From `config.model.rankseg`; None when RankSeg is disabled (the plain host)."""
        if not rankseg.enabled:
            return None
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: rankseg[n] for n in names})

    @property
    def shared_temperature(self) -> bool:
        return self.temperature == "shared"

    @property
    def oracle_train(self) -> bool:
        return self.oracle == "train_eval"

    @property
    def oracle_eval(self) -> bool:
        return self.oracle in ("train_eval", "eval")

"""RankSeg as a component: what every host (Segmenter, Mask2Former, ...) calls.

A host produces image-level class scores and per-class "classifiers" (class tokens for pixel
classification, class columns of query logits for region classification); the component
ranks the classes, keeps the top-kappa, gathers per image in rank order and normalises over
the rank slots with a per-rank affine (the rank-adaptive temperature).

Modules:
  ranking     pure ops: top-kappa (with oracle and dynamic-kappa selection), per-image
              gather (class rows, or region class columns + no-object), label -> rank
              remap, scatter back to class order, the -gt class mask, class histograms
  classifier  RankNorm (LayerNorm over rank slots, per-rank or shared affine),
              GroupWiseLinear (one linear classifier per class), cosine similarity
  encoders    the multi-label encoders xi: transformer over [context tokens; class tokens]
              (`tran_enc`, and Mask2Former's MultiLabelHead), DETR-style decoder (`tran_dec`),
              global pooling + MLP (`gap_linear`)
  losses      image-level targets and the multi-label losses (AsymmetricLoss, BCE)
  config      RankSegConfig, the frozen options read from `config.model.rankseg`
The contract (inputs, outputs, shapes) is in docs/architecture.md.
"""

"""Mask2Former's training criterion: Hungarian matching and point-sampled mask losses.

  point_sampling  `point_sample` (grid_sample semantics), the importance sampling of the mask
                  losses from given candidates, and the `jax.random` draws of a step
  matching        matching costs, the exact jittable assignment, `hungarian_match`
  criterion       classification / mask / dice losses, deep supervision, loss weights, and
                  RankSeg's label -> rank remap and multi-label loss
"""

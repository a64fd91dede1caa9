"""Parameter paths: our params are nested dicts whose key paths are tuples such as
('backbone', 'layers', 0, 'attn', 'query', 'kernel') (layer indices stay ints). Conversion,
sharding rules and the weight-decay groups all key on these tuples (docs/parameters.md)."""

from __future__ import annotations

from typing import Any

import jax


def key_path_tuple(key_path) -> tuple:
    """A jax tree key path (DictKey/SequenceKey/...) -> our path tuple (ints kept as ints)."""
    return tuple(k.key if hasattr(k, "key") else k.idx if hasattr(k, "idx") else k
                 for k in key_path)


def path_name(path: tuple) -> str:
    """('backbone', 'layers', 0, ...) -> 'backbone/layers/0/...'."""
    return "/".join(str(p) for p in path)


def flatten(tree: Any) -> list[tuple[tuple, Any]]:
    """[(path tuple, leaf)] of a nested params dict, in tree order."""
    return [(key_path_tuple(kp), x) for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def get_path(tree: Any, path: tuple) -> Any:
    """tree[p0][p1]... for a path tuple."""
    for k in path:
        tree = tree[k]
    return tree


def set_path(tree: dict, path: tuple, value: Any) -> None:
    """Sets tree[p0][p1]...[pn] = value in place (the parents must exist)."""
    get_path(tree, path[:-1])[path[-1]] = value

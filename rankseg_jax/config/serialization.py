"""A run's resolved config on disk: `<workdir>/config.json`, read back onto the schema.

The file holds every option (the whole schema with this run's values), so a run directory
says by itself which model it trained: evaluation, prediction, export and `load_model` need
no `--config` when given a run directory.
"""

from __future__ import annotations

import json
import os

import ml_collections as mlc

from rankseg_jax.config.schema import ConfigError, base_config

CONFIG_FILE = "config.json"


def to_json(config: mlc.ConfigDict) -> str:
    """The config as JSON (tuples become lists; `from_json` restores them)."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def _merge(target: mlc.ConfigDict, values: dict, prefix: str, source: str) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in target:
            raise ConfigError(f"{source}: unknown option {name!r} (written by another version?)")
        default = target[key]
        if isinstance(default, mlc.ConfigDict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: option {name!r} should be a section")
            _merge(default, value, name + ".", source)
        elif isinstance(default, tuple) and isinstance(value, list):
            target[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            target[key] = value


def from_json(text: str, source: str = "config.json") -> mlc.ConfigDict:
    """The schema with the values of `text` (JSON of `to_json`), locked."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source} is not valid JSON: {e}") from e
    config = base_config()
    _merge(config, values, "", source)
    config.lock()
    return config


def save(config: mlc.ConfigDict, directory: str | os.PathLike):
    """Writes `<directory>/config.json` atomically (local or cloud directory, see
    `rankseg_jax.paths`); returns its path (an epath.Path)."""
    from rankseg_jax import paths

    d = paths.as_path(directory, "workdir")
    d.mkdir(parents=True, exist_ok=True)
    paths.write_text_atomic(d / CONFIG_FILE, to_json(config))
    return d / CONFIG_FILE


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(a: mlc.ConfigDict, b: mlc.ConfigDict) -> list[tuple[str, object, object]]:
    """[(option name, value in a, value in b)] of every option whose values differ, by name.

    Values are compared in their JSON form (a tuple equals the list it is saved as).
    """
    fa, fb = (_flat(json.loads(to_json(c))) for c in (a, b))
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k)]


def format_differences(diffs: list[tuple[str, object, object]], *, first: str = "run",
                       second: str = "given", limit: int = 20) -> str:
    """'  option: run=X, given=Y' lines of `differences` output (at most `limit`, then a count)."""
    lines = [f"  {k}: {first}={a!r}, {second}={b!r}" for k, a, b in diffs[:limit]]
    if len(diffs) > limit:
        lines.append(f"  ... and {len(diffs) - limit} more")
    return "\n".join(lines)


def find_run_config(source: str | os.PathLike):
    """The config.json (epath.Path) of a run dir, its checkpoints/ dir or a step dir, if any."""
    from rankseg_jax import paths

    p = paths.as_path(source)
    for d in (p, *list(p.parents)[:3]):
        if (d / CONFIG_FILE).is_file():
            return d / CONFIG_FILE
    return None


def load(source: str | os.PathLike) -> mlc.ConfigDict:
    """The saved config of a run (see `find_run_config`). Raises ConfigError if none."""
    path = find_run_config(source)
    if path is None:
        raise ConfigError(f"no {CONFIG_FILE} found for {str(source)!r}; pass the config "
                          "explicitly (--config=configs/....py)")
    return from_json(path.read_text(), str(path))

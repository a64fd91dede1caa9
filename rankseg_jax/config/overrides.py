"""Command-line overrides: a misspelled `--config.<name>` is named before ml_collections fails."""

from __future__ import annotations

import difflib
import re

import ml_collections as mlc

from rankseg_jax.config import schema
from rankseg_jax.config.schema import ConfigError


def option_names(config: mlc.ConfigDict, prefix: str = "") -> list[str]:
    """Dotted names of every option (leaf, not section) of `config`."""
    names = []
    for key, value in config.items():
        if isinstance(value, mlc.ConfigDict):
            names.extend(option_names(value, f"{prefix}{key}."))
        else:
            names.append(prefix + key)
    return names


def check_override_names(argv, flag: str = "config") -> None:
    """Raises ConfigError for a command-line override `--config.<name>=...` whose name is no
    option or section of the schema, naming the full option and the closest existing ones.

    ml_collections would fail with a bare `AttributeError: "'num_steps'"` while parsing the
    flags; config files never add options, so the schema is the complete list.
    """
    options = option_names(schema.base_config())
    sections = {o.rsplit(".", i)[0] for o in options for i in range(1, o.count(".") + 1)}
    pattern = re.compile(rf"^--?(?:no)?{re.escape(flag)}\.([^=]+)")
    for arg in argv:
        match = pattern.match(arg)
        if not match or match.group(1) in options or match.group(1) in sections:
            continue
        name = match.group(1)
        same_leaf = [o for o in options if o.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]]
        hint = difflib.get_close_matches(name, options, n=2, cutoff=0.75) or same_leaf
        raise ConfigError(f"--{flag}.{name}: there is no option {name!r}"
                          + (f"; did you mean {' or '.join(hint)}?" if hint else "")
                          + " (all options: rankseg_jax/config/schema.py)")

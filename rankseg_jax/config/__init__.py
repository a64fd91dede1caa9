"""The configuration of rankseg_jax: one schema, its variants, one validation.

    from rankseg_jax import config as cfg_lib
    c = cfg_lib.base_config()          # every option with its default
    cfg_lib.validate(c)                # every check, once, before compiling

`configs/*.py` (outside the package) are thin files with `get_config(arg)` that start from
`base_config()`, set dataset and model facts through `variants`, and return a locked config.
"""

from rankseg_jax.config.schema import (
    VIT_PRESETS,
    ConfigError,
    apply_vit_preset,
    base_config,
)
from rankseg_jax.config.serialization import from_json, to_json
from rankseg_jax.config.validation import validate

__all__ = ["VIT_PRESETS", "ConfigError", "apply_vit_preset", "base_config", "from_json",
           "to_json", "validate"]

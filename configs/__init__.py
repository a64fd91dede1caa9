"""ml_collections configs: `get_config(arg)` per dataset (schema: `rankseg_jax/config/`)."""

"""ml_collections configs: `get_config(arg)` per dataset; the schema lives in `common.py`."""

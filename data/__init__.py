"""Dataset preparation: converters from mmseg folder layouts to ArrayRecord shards."""

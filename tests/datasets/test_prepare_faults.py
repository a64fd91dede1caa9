"""A failed `data.prepare` never costs the dataset already prepared (issue 11 item 2), and a
damaged prepared dataset is named by validation."""

import json

import data_layouts as dl
import helpers  # noqa: F401  (puts the repo root on sys.path)
import numpy as np
import pytest

from data.prepare import prepare
from rankseg_jax import config as config_lib
from rankseg_jax.config import validation
from rankseg_jax.data import registry as datasets
from rankseg_jax.data.sources import ArrayRecordSource, BadExampleError


def test_failed_rebuild_keeps_the_prepared_dataset(tmp_path):
    root = dl.write_dataset(tmp_path / "ade", "ade20k", n_per_split=2)
    info = datasets.get_dataset_info("ade20k")
    out = tmp_path / "out"
    prepare("ade20k", str(root), str(out))
    meta = (out / "metadata.json").read_text()
    before = [ArrayRecordSource(out, info, "val")[i]["label"] for i in range(2)]
    # Rebuild from a source with a corrupt image: refused, and the old dataset is untouched.
    (root / "images/validation/val_001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(BadExampleError, match="val_001.jpg"):
        prepare("ade20k", str(root), str(out))
    assert (out / "metadata.json").read_text() == meta
    after = ArrayRecordSource(out, info, "val")
    assert len(after) == 2
    for i in range(2):
        np.testing.assert_array_equal(after[i]["label"], before[i])
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "rankseg_ade20k"]


def test_missing_prepared_folder_names_data_root(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metadata.json").write_text(json.dumps(
        {"dataset": "ade20k", "tfds": {"builder": "rankseg_ade20k", "version": "1.0.0"},
         "splits": {"train": {}, "val": {}}}))
    c = config_lib.base_config()
    c.data.name, c.data.format, c.data.root = "ade20k", "array_record", str(out)
    c.data.reduce_zero_label = True
    with pytest.raises(config_lib.ConfigError,
                       match=rf"data.root='{out}': the prepared dataset folder "
                             rf"{out}/rankseg_ade20k/1.0.0 is missing"):
        validation.validate_data(c)

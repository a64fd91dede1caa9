"""grain pipelines: batches, determinism across processes, exact resume (also with workers),
per-process slicing, bad-example policy, global arrays and eval examples."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import data_layouts as dl
import grain
import jax
import numpy as np
import pytest
from PIL import Image

from data.prepare import prepare
from rankseg_jax import config as config_lib
from rankseg_jax.config import base_config
from rankseg_jax.data import pipeline as ip


def small_config(**data):
    c = base_config()
    c.seed = 7
    c.train.batch_size = 4
    c.data.synthetic.image_size = (48, 64)
    c.data.synthetic.num_train = 10  # not a multiple of the batch: epochs straddle batches
    c.data.synthetic.num_val = 3
    c.data.crop_size = (32, 32)
    c.data.train_scale = (128, 32)
    c.data.test_scale = (128, 32)
    c.data.read_threads = 1
    c.data.prefetch = 1
    for k, v in data.items():
        c.data[k] = v
    return c


def digest(batch):
    h = hashlib.sha256()
    for k in sorted(batch):
        h.update(k.encode())
        h.update(np.ascontiguousarray(batch[k]).tobytes())
    return h.hexdigest()


def take(it, n):
    return [digest(next(it)) for _ in range(n)]


def test_batch_structure():
    it = ip.make_train_iterator(small_config(), process_index=0, process_count=1)
    b = next(it)
    assert sorted(b) == ["image", "label"]
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["label"].shape == (4, 32, 32) and b["label"].dtype == np.int32
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0  # mean = std = 127.5
    lab = b["label"]
    assert ((lab >= 0) & (lab < 150) | (lab == 255)).all()
    assert len({digest({"x": x}) for x in b["image"]}) == 4


_SUBPROCESS = """
import hashlib, json, sys
import numpy as np
sys.path[:0] = ['tests', 'tests/datasets']
from test_input_pipeline import small_config, take
from rankseg_jax.data import pipeline as ip
it = ip.make_train_iterator(small_config(), process_index=0, process_count=1)
print(json.dumps(take(it, 5)))
"""


def test_deterministic_in_a_fresh_process():
    here = take(ip.make_train_iterator(small_config(), process_index=0, process_count=1), 5)
    repo = pathlib.Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _SUBPROCESS], capture_output=True, text=True,
                         check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=repo)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here
    assert len(set(here)) == 5
    other = small_config()
    other.seed = 8
    assert take(ip.make_train_iterator(other, process_index=0, process_count=1), 1) != here[:1]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly(workers):
    config = small_config(num_workers=workers)
    it = ip.make_train_iterator(config, process_index=0, process_count=1)
    full = take(it, 8)  # 32 examples: more than 3 epochs of 10
    if workers:
        it.close()
    it = ip.make_train_iterator(config, process_index=0, process_count=1)
    assert take(it, 3) == full[:3]
    state = it.get_state()
    if workers:
        it.close()
    fresh = ip.make_train_iterator(config, process_index=0, process_count=1)
    fresh.set_state(state)
    assert take(fresh, 5) == full[3:]
    if workers:
        fresh.close()
    if workers:  # same batches as in-process: workers change speed, not content
        assert full == take(ip.make_train_iterator(small_config(), process_index=0,
                                                   process_count=1), 8)


def test_resume_on_prepared_data(tmp_path):
    # A restored iterator continues exactly, in-process and with the TFDS reader in a grain
    # worker process (which gives the same batches).
    root = dl.write_dataset(tmp_path / "full", "ade20k_full", n_per_split=5)
    prepare("ade20k_full", str(root), str(tmp_path / "prep"), splits=("train",))
    c = small_config(name="ade20k_full", format="array_record", root=str(tmp_path / "prep"),
                     ignore_index=-1, crop_size=(16, 16), train_scale=(64, 16))
    c.model.num_classes = 847
    c.model.rankseg.topk = 50
    c.train.batch_size = 2
    full = take(ip.make_train_iterator(c, process_index=0, process_count=1), 5)  # 2 epochs
    for workers in (0, 1):
        c.data.num_workers = workers
        it = ip.make_train_iterator(c, process_index=0, process_count=1)
        assert take(it, 2) == full[:2]
        state = it.get_state()
        fresh = ip.make_train_iterator(c, process_index=0, process_count=1)
        fresh.set_state(state)
        assert take(fresh, 3) == full[2:]
        if workers:
            it.close()
            fresh.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_orbax_checkpoint_roundtrip(tmp_path, workers):
    ocp = pytest.importorskip("orbax.checkpoint")
    config = small_config(num_workers=workers)
    full = take(ip.make_train_iterator(small_config(), process_index=0, process_count=1), 6)
    it = ip.make_train_iterator(config, process_index=0, process_count=1)
    take(it, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(2, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    if workers:
        it.close()
    restored = ip.make_train_iterator(config, process_index=0, process_count=1)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(2, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointRestore(restored)))
    assert take(restored, 4) == full[2:]
    if workers:
        restored.close()


def test_process_slices_partition_the_global_batch():
    def rows(batch):
        pairs = zip(batch["image"], batch["label"], strict=True)
        return sorted(digest({"i": x, "l": y}) for x, y in pairs)

    config = small_config()
    config.train.batch_size = 4
    one = ip.make_train_iterator(config, process_index=0, process_count=1)
    parts = [ip.make_train_iterator(config, process_index=p, process_count=2) for p in (0, 1)]
    for _ in range(4):
        b = next(one)
        p0, p1 = next(parts[0]), next(parts[1])
        assert p0["image"].shape[0] == p1["image"].shape[0] == 2
        assert rows(b) == sorted(rows(p0) + rows(p1))
    config.train.batch_size = 3
    with pytest.raises(ValueError, match="not divisible"):
        ip.make_train_iterator(config, process_index=0, process_count=2)


def _ade_config(root, **data):
    c = small_config(name="ade20k", format="folder", root=str(root), reduce_zero_label=True,
                     **data)
    c.train.batch_size = 2
    return c


def test_bad_example_policy(tmp_path):
    root = dl.write_dataset(tmp_path / "ade", "ade20k", n_per_split=3)
    bad = dl.raw_label("ade20k")
    bad[0, 0] = 222
    Image.fromarray(bad, mode="L").save(root / "annotations/training/train_001.png")
    with pytest.raises(ip.BadExampleError, match="train_001.png"):
        take(ip.make_train_iterator(_ade_config(root), process_index=0, process_count=1), 3)
    counter = ip.BadExampleCounter()
    it = ip.make_train_iterator(_ade_config(root, bad_example_policy="skip"), process_index=0,
                                process_count=1, counter=counter)
    batches = [next(it) for _ in range(6)]  # 4 epochs of 3: the bad one comes up 4 times
    assert all(sorted(b) == ["image", "label"] and b["image"].shape[0] == 2 for b in batches)
    assert counter.count == 4


def test_config_contradictions_are_named(tmp_path):
    root = dl.write_dataset(tmp_path / "ade", "ade20k", n_per_split=1)
    c = _ade_config(root)
    c.data.reduce_zero_label = False
    with pytest.raises(ValueError, match="data.reduce_zero_label"):
        ip.make_train_iterator(c, process_index=0, process_count=1)
    c = _ade_config(root)
    c.model.num_classes = 151
    with pytest.raises(ValueError, match="model.num_classes"):
        ip.make_train_iterator(c, process_index=0, process_count=1)
    c = _ade_config(root, ignore_index=-1)
    with pytest.raises(ValueError, match="data.ignore_index"):
        ip.make_train_iterator(c, process_index=0, process_count=1)
    # Enumerated options are checked once, by the config validation, before anything runs.
    with pytest.raises(ValueError, match="data.bad_example_policy"):
        config_lib.validate(_ade_config(root, bad_example_policy="ignore"))


def test_to_global():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    b = next(ip.make_train_iterator(small_config(), process_index=0, process_count=1))
    g = ip.to_global(b, sharding)
    assert isinstance(g["image"], jax.Array) and g["image"].shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(np.asarray(g["label"]), b["label"])


@pytest.mark.parametrize("fmt", ["folder", "array_record"])
def test_eval_examples(tmp_path, fmt):
    root = dl.write_dataset(tmp_path / "full", "ade20k_full", n_per_split=2)
    if fmt == "array_record":
        prepare("ade20k_full", str(root), str(tmp_path / "prep"), splits=("val",))
        root = tmp_path / "prep"
    c = small_config(name="ade20k_full", format=fmt, root=str(root), ignore_index=-1,
                     test_scale=(2048, 512))
    c.model.num_classes = 847
    c.model.rankseg.topk = 50
    examples = list(ip.make_eval_examples(c, "val"))
    assert [e["name"] for e in examples] == ["val_000", "val_001"]
    e = examples[0]
    assert e["image"].shape == (512, 853, 3) and e["image"].dtype == np.float32  # 24x40 -> 512
    np.testing.assert_array_equal(e["label"], dl.expected_ids("ade20k_full"))
    c.test.max_images = 1
    assert len(list(ip.make_eval_examples(c, "val"))) == 1


def test_synthetic_eval_examples():
    ex = list(ip.make_eval_examples(small_config(), "val"))
    assert len(ex) == 3
    assert ex[0]["image"].shape == (32, 43, 3) and ex[0]["label"].shape == (48, 64)

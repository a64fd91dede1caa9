"""gs:// workdirs through a local stand-in: a fake `gs`/`gcs` fsspec file system rooted in a
temporary folder (what gcsfs would provide), reached through etils.epath as in production.
Nothing may land in a local folder named `gs:`; an unusable scheme fails before any work."""

import importlib
import json
import logging
import os

import pytest
from etils.epath import backend as epath_backend
from fsspec.implementations.local import LocalFileSystem
from helpers import small_train_config

from rankseg_jax import paths, run_info
from rankseg_jax.config import ConfigError, serialization
from rankseg_jax.train import loop as train
from rankseg_jax.train.metric_logger import MetricLogger

fsspec_registry = importlib.import_module("fsspec.registry")  # not fsspec.registry (a dict)


class _FakeGCS(LocalFileSystem):
    """`gs://bucket/x` -> `<root>/bucket/x` on the local disk."""

    protocol = ("gs", "gcs")
    root = ""

    def __init__(self, *args, **kwargs):
        del args, kwargs  # finalize_on_close=... (gcsfs options)
        super().__init__()

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                return os.path.join(cls.root, path[len(prefix):])
        return super()._strip_protocol(path)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    bucket_root = tmp_path / "store"
    bucket_root.mkdir()
    monkeypatch.setattr(_FakeGCS, "root", str(bucket_root))
    for name in ("gs", "gcs"):
        monkeypatch.setitem(fsspec_registry._registry, name, _FakeGCS)
    epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield bucket_root
    epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()
    assert not list(cwd.iterdir()), "something was written to a local folder"


def test_workdir_files_go_to_the_bucket(fake_gcs, caplog):
    c = small_train_config()
    run = "gs://bucket/run"
    assert str(paths.as_path(run)) == run
    serialization.save(c, run)
    assert serialization.load(run + "/checkpoints/3").to_dict() == c.to_dict()
    run_info.save(run_info.collect(c, config_file="configs/demo.py:smoke"), run)
    assert run_info.load(run)["variant"] == "smoke"

    for restart in range(2):  # the second logger appends to what the first uploaded
        caplog.clear()
        logger = MetricLogger(run, total_steps=4)
        logger.log_train(2 + restart, {"loss": 1.0, "acc_seg": 50.0, "img_recall": 0.5,
                                       "images_per_s": 1.0, "step_time": 1.0}, eta_s=None)
        logging.getLogger("rankseg_jax.test").warning("a warning for log.txt %d", restart)
        logger.log_eval(2 + restart, {"mIoU": 0.25})
        logger.close()
    store = fake_gcs / "bucket" / "run"
    rows = [json.loads(x) for x in (store / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in rows] == [(2, "train"), (2, "val"), (3, "train"),
                                                       (3, "val")]
    assert rows[1]["mIoU_pct"] == 25.0 and rows[0]["img_recall_pct"] == 50.0
    log_txt = (store / "log.txt").read_text()
    assert "a warning for log.txt 0" in log_txt and "a warning for log.txt 1" in log_txt
    assert "eval step 3: mIoU=25.00%" in log_txt
    assert list((store / "tensorboard").iterdir())
    assert sorted(p.name for p in store.iterdir()) == [
        "config.json", "log.txt", "metrics.jsonl", "run_info.json", "tensorboard"]


def test_cloud_workdir_without_a_lock_warns_before_work(fake_gcs, caplog):
    import contextlib

    with caplog.at_level(logging.WARNING), contextlib.ExitStack() as stack:
        train._lock(paths.as_path("gs://bucket/run"), stack)
    assert "lock (train.lock) is not available" in caplog.text


def test_unusable_schemes_fail_before_any_work(tmp_path, monkeypatch):
    """Without gcsfs (not installed here) a gs:// workdir is refused at start, naming what to
    install; an unknown scheme is refused instead of becoming a local folder."""
    epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()
    monkeypatch.chdir(tmp_path)
    c = small_train_config()
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"workdir='gs://bucket/run'.*gcsfs"):
            train.train_and_evaluate(c, "gs://bucket/run")
    with pytest.raises(ConfigError, match="memory:// scheme is not supported"):
        train.train_and_evaluate(c, "memory://run")
    assert not list(tmp_path.iterdir())

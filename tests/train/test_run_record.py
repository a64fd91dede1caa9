"""What a run leaves behind: run_info.json and per-checkpoint metadata, log.txt appended across
a restart, percent metric names, the best step across a restart (--checkpoint=best), the
end-of-run summary, the ETA without the compiling step, a profile window."""

import json
import os

import jax
import pytest
from helpers import small_train_config

from rankseg_jax import checkpointing, run_info
from rankseg_jax.config import serialization
from rankseg_jax.train import loop as train


def test_run_info_records_the_environment_that_changes_a_run():
    env = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "XLA_FLAGS": "--x=1", "HOME": "/h",
           "JAX_PLATFORMS": ""}
    assert run_info.environment(env) == {"XLA_FLAGS": "--x=1", "JAX_PLATFORMS": "",
                                         "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert run_info.environment({}) == {}


def test_run_record_across_a_restart(tmp_path, monkeypatch):
    miou = {1: 0.6, 2: 0.4, 3: 0.5}
    monkeypatch.setattr(train, "_evaluate", lambda config, setup, params, workdir, step: {
        "mIoU": miou[step], "mAcc": 0.25, "aAcc": 0.5})
    c = small_train_config(**{"train.steps": 2, "train.ckpt_every": 1, "train.eval_every": 1,
                              "train.log_every": 1, "train.keep_checkpoints": 1,
                              "train.profile_steps": (1, 2)})
    info = run_info.collect(c, config_file="configs/demo.py:steps=2", overrides={"a.b": 1})
    train.train_and_evaluate(c, tmp_path, info=info)
    c2 = small_train_config(**{"train.steps": 3, "train.ckpt_every": 1, "train.eval_every": 1,
                               "train.log_every": 1, "train.keep_checkpoints": 1})
    train.train_and_evaluate(c2, tmp_path)

    # run_info.json (rewritten by the second run) and the metadata of every checkpoint.
    saved = json.loads((tmp_path / "run_info.json").read_text())
    assert set(saved["versions"]) >= {"python", "jax", "jaxlib", "flax", "optax",
                                      "orbax-checkpoint", "numpy"}
    assert saved["git"] == run_info.git_revision() != ""
    assert saved["environment"].get("XLA_FLAGS") == os.environ.get("XLA_FLAGS")
    assert saved["devices"] == {"platform": "cpu", "kind": "cpu",
                                "count": len(jax.devices()), "processes": 1}
    assert saved["config"] == json.loads(serialization.to_json(c2))
    step1 = checkpointing.read_step_info(tmp_path / "checkpoints" / "1")
    assert step1["variant"] == "steps=2" and step1["overrides"] == {"a.b": 1}
    assert step1["config"]["train"]["steps"] == 2
    assert checkpointing.read_step_info(tmp_path / "checkpoints" / "3")["config"]["train"][
        "steps"] == 3

    # Keep-best across the restart: step 1 (60 %) is kept beside the latest, 3.
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [1, 3]
    assert checkpointing.resolve_step(tmp_path, "best") == 1
    assert checkpointing.resolve_step(tmp_path, "3") == 3
    assert checkpointing.resolve_step(tmp_path, "latest") is None
    with pytest.raises(checkpointing.CheckpointError, match=r"no checkpoint step 2 .*\[1, 3\]"):
        checkpointing.resolve_step(tmp_path, "2")

    # Percent everywhere, and the names say so.
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert [(r["step"], r["mIoU_pct"], r["aAcc_pct"]) for r in val] == [
        (1, 60.0, 50.0), (2, 40.0, 50.0), (3, 50.0, 50.0)]
    trn = [r for r in rows if r["split"] == "train"]
    assert all("acc_seg_pct" in r and "acc_seg" not in r and 0 <= r["img_recall_pct"] <= 100
               for r in trn)

    # log.txt: both runs' lines, appended; ETA waits for a compiled step; the summary.
    text = (tmp_path / "log.txt").read_text()
    assert text.count("first step (compilation included) took") == 2
    assert "step 1: " in text and "ETA estimating" in text
    step2 = next(line for line in text.splitlines() if "step 2: " in line)
    assert "ETA 0:00:00" in step2 and "acc_seg=" in step2 and "%" in step2
    assert "eval step 1: mIoU=60.00%, mAcc=25.00%, aAcc=50.00%" in text
    assert "weights from workdir checkpoint 2" in text
    summary = text[text.rindex("finished at step 3"):]
    assert "best val mIoU: 60.00% at step 1 (--checkpoint=best)" in summary
    assert f"tensorboard --logdir {tmp_path}" in summary
    for name in ("checkpoints", "config.json", "log.txt", "metrics.jsonl", "tensorboard"):
        assert str(tmp_path / name) in summary

    # The profile window of the first run.
    assert any(p.is_file() for p in (tmp_path / "profile").rglob("*"))

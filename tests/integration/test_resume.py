"""Exact resume after SIGKILL and after SIGTERM (preemption), and two processes
(jax.distributed) == one process."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # subprocesses: trainers, CLIs

HERE = pathlib.Path(__file__).parents[1]  # tests/
DRIVER = HERE / "train_driver.py"


def _run(workdir, overrides, *extra, check=True, env=None):
    cmd = [sys.executable, str(DRIVER), str(workdir), json.dumps(overrides), *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, **(env or {})))
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def _data_state(workdir, step):
    files = sorted((pathlib.Path(workdir) / "checkpoints" / str(step) / "data").glob("*.json"))
    return [f.read_text() for f in files]


def test_sigkill_then_resume_is_exact(tmp_path):
    over = {"train.steps": 4, "train.ckpt_every": 2, "model.head.dropout": 0.1}
    _run(tmp_path / "straight", over, "--dump", str(tmp_path / "straight.npz"))
    killed = _run(tmp_path / "killed", over, "--kill-at-save", "4", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]  # really SIGKILLed
    steps = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert steps == ["2"]
    again = _run(tmp_path / "killed", over, "--dump", str(tmp_path / "resumed.npz"))
    assert '"init": "workdir checkpoint 2"' in again.stdout
    a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # Same data position after step 4 (the next batch would be the same too).
    assert _data_state(tmp_path / "straight", 4) == _data_state(tmp_path / "killed", 4)


def test_mask2former_sigkill_then_resume_is_exact(tmp_path):
    """Mask2Former+RankSeg on synthetic panoptic data, with dropout / drop-path and point
    draws from the step key: a SIGKILLed and resumed run equals the straight one."""
    over = {"train.steps": 4, "train.ckpt_every": 2, "model.mask2former.dropout": 0.1,
            "model.swin.drop_path_rate": 0.1, "model.rankseg.ml_dropout": 0.1}
    arch = ("--arch", "mask2former")
    _run(tmp_path / "straight", over, *arch, "--dump", str(tmp_path / "straight.npz"))
    killed = _run(tmp_path / "killed", over, *arch, "--kill-at-save", "4", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    again = _run(tmp_path / "killed", over, *arch, "--dump", str(tmp_path / "resumed.npz"))
    assert '"init": "workdir checkpoint 2"' in again.stdout
    a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files) and any(k.startswith("ml_head") for k in a.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert _data_state(tmp_path / "straight", 4) == _data_state(tmp_path / "killed", 4)


def test_sigterm_saves_exits_cleanly_and_resumes_exactly(tmp_path):
    over = {"train.steps": 4, "train.ckpt_every": 100, "model.head.dropout": 0.1}
    _run(tmp_path / "straight", over, "--dump", str(tmp_path / "straight.npz"))
    term = _run(tmp_path / "term", over, "--signal-at-step", "2")  # exit code 0
    assert '"preempted": true' in term.stdout
    steps = sorted(p.name for p in (tmp_path / "term" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert steps == ["2"]  # saved at the next step boundary although ckpt_every=100
    again = _run(tmp_path / "term", over, "--dump", str(tmp_path / "resumed.npz"))
    assert '"init": "workdir checkpoint 2"' in again.stdout
    a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    over = {"train.steps": 2, "train.batch_size": 4}
    _run(tmp_path / "one", over, "--dump", str(tmp_path / "one.npz"))
    addr = f"localhost:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen(
        [sys.executable, str(DRIVER), str(tmp_path / "two"), json.dumps(over),
         "--process-id", str(i), "--num-processes", "2", "--coordinator", addr,
         "--dump", str(tmp_path / "two.npz")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (so, se) in zip(procs, outs, strict=True):
        assert p.returncode == 0, so[-2000:] + se[-4000:]
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for k in a.files:
        # Same global batch; only the reduction order across devices differs.
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)

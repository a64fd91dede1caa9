"""Faults across processes (issue 11): two trainers on one workdir, a trainer killed while
holding it, a damaged latest checkpoint, Ctrl-C, a misspelled command-line option."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

HERE = pathlib.Path(__file__).parents[1]  # tests/
ROOT = HERE.parent
DRIVER = HERE / "train_driver.py"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def _cmd(workdir, overrides, *extra):
    return [sys.executable, str(DRIVER), str(workdir), json.dumps(overrides), *extra]


def _run(workdir, overrides, *extra):
    return subprocess.run(_cmd(workdir, overrides, *extra), capture_output=True, text=True,
                          timeout=600, env=ENV)


def _steps(workdir):
    return sorted(p.name for p in (pathlib.Path(workdir) / "checkpoints").iterdir())


@pytest.mark.slow
def test_second_trainer_refused_then_stale_lock_taken_over(tmp_path):
    over = {"train.steps": 2, "train.ckpt_every": 1}
    busy = subprocess.Popen(_cmd(tmp_path, over, "--block-at-save", "1"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "train.lock"
        deadline = time.time() + 300
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.5)
        assert json.loads(lock.read_text())["pid"] == busy.pid
        # A second trainer, as a user starts it: one `error:` line naming the holder.
        second = subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--config=configs/demo.py:smoke",
             f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=300, env=ENV,
            cwd=ROOT)
        assert second.returncode == 1, second.stderr[-3000:]
        assert f"error: {tmp_path} is in use by another trainer: pid {busy.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        busy.send_signal(signal.SIGKILL)  # dies holding the lock
        busy.communicate()
    third = _run(tmp_path, over)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"took over the stale lock {lock} of pid {busy.pid}" in third.stderr
    assert not lock.exists()  # released at the end
    assert _steps(tmp_path) == ["1", "2"]


@pytest.mark.slow
def test_truncated_latest_checkpoint_resumes_from_the_previous_one(tmp_path):
    over = {"train.steps": 2, "train.ckpt_every": 1, "train.async_checkpointing": True}
    first = _run(tmp_path, over)
    assert first.returncode == 0, first.stderr[-3000:]
    for f in (tmp_path / "checkpoints" / "2" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:100])
    again = _run(tmp_path, dict(over, **{"train.steps": 3}))
    assert again.returncode == 0, again.stderr[-3000:]
    assert '"init": "workdir checkpoint 1"' in again.stdout
    assert f"checkpoint {tmp_path / 'checkpoints' / '2'} is unreadable" in again.stderr
    assert "Traceback" not in again.stderr and "Event loop is closed" not in again.stderr
    steps = _steps(tmp_path)
    assert [s for s in steps if s.isdigit()] == ["1", "2", "3"]
    assert any(s.startswith("2.broken-") for s in steps)  # kept for inspection


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_130(tmp_path):
    over = {"train.steps": 4, "train.ckpt_every": 100}
    out = _run(tmp_path, over, "--signal-at-step", "2", "--signal", "SIGINT")
    assert out.returncode == 130, out.stderr[-3000:]
    assert '"stopped_by": "SIGINT"' in out.stdout
    assert _steps(tmp_path) == ["2"]
    assert "KeyboardInterrupt" not in out.stderr


def test_cli_misspelled_option_and_bad_size_are_one_line_errors(tmp_path):
    for arg, message in [
            ("--config.train.num_steps=5", "error: --config.train.num_steps: there is no option "
                                           "'train.num_steps'; did you mean train.steps?"),
            ("--config.data.crop_size=64", "error: data.crop_size=(64,) must be two positive "
                                           "integer sizes")]:
        out = subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--config=configs/demo.py:smoke", arg,
             f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True, timeout=300,
            env=ENV, cwd=ROOT)
        assert out.returncode == 2, out.stderr[-3000:]
        assert message in out.stderr
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()

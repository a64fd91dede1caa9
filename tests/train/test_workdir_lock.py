"""One trainer per workdir (issue 11 item 4): the lock file, its holder, stale locks."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from rankseg_jax.train import workdir_lock
from rankseg_jax.train.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLocked


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_holder_is_refused_with_the_holders_name(tmp_path):
    with WorkdirLock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(WorkdirLocked, match=rf"in use by another trainer: pid {os.getpid()} "
                                                rf"on host '{socket.gethostname()}'"):
            WorkdirLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()  # released on exit
    with WorkdirLock(tmp_path):  # and free again
        pass


def test_released_when_the_body_raises(tmp_path):
    with pytest.raises(RuntimeError), WorkdirLock(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_FILE).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = _dead_pid()
    (tmp_path / LOCK_FILE).write_text(json.dumps(
        {"pid": dead, "host": socket.gethostname(), "start": "1", "started_at": "then",
         "command": "python main.py"}))
    with caplog.at_level(logging.WARNING), WorkdirLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"took over the stale lock {tmp_path / LOCK_FILE} of pid {dead}" in caplog.text
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_reused_pid_is_stale_but_a_live_holder_is_not(tmp_path):
    # Our own pid with another start time: the pid was reused after the holder died.
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": "x", "command": "c"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(dict(me, start="-1")))
    with WorkdirLock(tmp_path):
        pass
    # A live process (this one, right start time) holds it: refused.
    start = workdir_lock._process_start(os.getpid())
    (tmp_path / LOCK_FILE).write_text(json.dumps(dict(me, start=start)))
    with pytest.raises(WorkdirLocked):
        WorkdirLock(tmp_path).acquire()


def test_holder_on_another_host_is_refused_and_the_file_named(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps(
        {"pid": _dead_pid(), "host": "elsewhere", "start": "1", "started_at": "t",
         "command": "c"}))
    with pytest.raises(WorkdirLocked, match=rf"host 'elsewhere'.*not been refreshed for 300 s"
                                            rf".*delete {tmp_path / LOCK_FILE}"):
        WorkdirLock(tmp_path).acquire()


def test_lock_of_another_host_is_taken_over_once_its_heartbeat_stops(tmp_path, caplog):
    """A preempted run restarting on a new machine: the old host's lock, no longer refreshed,
    is taken over after the stale margin; a refreshed one is still refused."""
    path = tmp_path / LOCK_FILE
    path.write_text(json.dumps({"pid": 1, "host": "old-vm", "start": "1", "started_at": "t",
                                "command": "c"}))
    with pytest.raises(WorkdirLocked, match="old-vm"):
        WorkdirLock(tmp_path, stale_after_s=60).acquire()
    old = path.stat().st_mtime - 61
    os.utime(path, (old, old))
    with caplog.at_level(logging.WARNING), WorkdirLock(tmp_path, stale_after_s=60):
        assert json.loads(path.read_text())["host"] == socket.gethostname()
    assert "took over the stale lock" in caplog.text and "old-vm" in caplog.text


def test_holder_refreshes_its_lock(tmp_path):
    lock = WorkdirLock(tmp_path, heartbeat_s=0.05)
    lock.acquire()
    path = tmp_path / LOCK_FILE
    os.utime(path, (1.0, 1.0))
    deadline = time.time() + 10
    while path.stat().st_mtime < 2.0 and time.time() < deadline:
        time.sleep(0.05)
    assert path.stat().st_mtime > time.time() - 60  # the heartbeat thread refreshed it
    lock.release()
    assert not path.exists() and lock._beater is None


def test_release_leaves_another_holders_lock_alone(tmp_path):
    lock = WorkdirLock(tmp_path)
    lock.acquire()
    other = {"pid": 1, "host": "elsewhere", "start": "1", "started_at": "t", "command": "c"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(other))
    lock.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text()) == other

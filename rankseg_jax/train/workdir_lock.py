"""One trainer per run directory: the lock file `<workdir>/train.lock`.

Process 0 of a run takes the lock before it writes anything into the workdir and releases it
when `train_and_evaluate` returns or raises (SIGTERM and SIGINT stop the loop cleanly, so they
release it too). The file holds the holder's pid, host name, process start time and command
line (JSON). It is created with O_CREAT | O_EXCL, which is atomic on local and network file
systems, so of two trainers started together exactly one gets it.

A lock left behind by a process that died without cleaning up (SIGKILL, out-of-memory kill,
power loss) is stale when its holder is on this host and no longer alive (its pid is gone,
or now belongs to a process started at another time): it is taken over with a warning. A
holder on another host cannot be checked from here; instead the holder refreshes the file's
modification time every `HEARTBEAT_S` seconds (a daemon thread), and a lock of another host
that has not been refreshed for `STALE_AFTER_S` seconds is stale. This is what lets a
preempted run restart on a new machine (a new TPU VM, a requeued SLURM job) without anybody
deleting the lock, while a live trainer elsewhere is still refused. The margin absorbs clock
differences between hosts and a file system's coarse timestamps; until it has passed the
message says which file to delete once that run is known to be gone.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import pathlib
import socket
import sys
import threading
import time

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
HEARTBEAT_S = 30.0  # how often the holder refreshes the lock's modification time
STALE_AFTER_S = 300.0  # a lock of another host not refreshed for this long is stale


class WorkdirLocked(RuntimeError):
    """Another live trainer holds the workdir; the message names it."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot, /proc/<pid>/stat field 22),
    or None where /proc is not available. Tells a reused pid from the original holder."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat[stat.rindex(")") + 2:].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` on this host exists and (if known) started at `start`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


def _this_process() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _process_start(pid),
            "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}


def describe(holder: dict) -> str:
    """'pid 123 on host h (started 2024-01-01T10:00:00: python main.py ...)'."""
    return (f"pid {holder.get('pid')} on host {holder.get('host')!r} (started "
            f"{holder.get('started_at')}: {holder.get('command')})")


def _read(path: pathlib.Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


class WorkdirLock:
    """Exclusive use of a run directory by one trainer (a context manager).

    workdir: the run directory (must exist). `acquire()` raises WorkdirLocked naming the
    holder if another live trainer has the directory; `release()` removes the lock file if
    it is still this process's.
    """

    def __init__(self, workdir: str | os.PathLike, *, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self._me: dict | None = None
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    def acquire(self) -> None:
        me = _this_process()
        for _ in range(10):  # a retry per lock that vanished or was set aside meanwhile
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = _read(self.path)
                except FileNotFoundError:
                    continue  # released between our open and read
                if not self._stale(holder):
                    raise WorkdirLocked(
                        f"{self.path.parent} is in use by another trainer: "
                        f"{describe(holder)}. Wait for it to finish or stop it, or use "
                        f"another --workdir. A lock of another host is taken over once it has "
                        f"not been refreshed for {self.stale_after_s:.0f} s; if that run is "
                        f"gone (e.g. its machine died), delete {self.path}.") from None
                self._take_over(holder)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            self._me = me
            self._start_heartbeat()
            return
        raise WorkdirLocked(f"could not take {self.path}: it keeps changing")

    def _stale(self, holder: dict | None) -> bool:
        if holder is None:
            # Unreadable: half-written by a holder starting right now, or left by one that
            # died between creating and writing it. Stale only if it stays unreadable.
            time.sleep(1.0)
            try:
                return _read(self.path) is None
            except FileNotFoundError:
                return True
        if holder.get("host") == socket.gethostname():
            return not _alive(holder["pid"], holder.get("start"))
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > self.stale_after_s

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._beater = threading.Thread(target=self._heartbeat, name="workdir-lock-heartbeat",
                                        daemon=True)
        self._beater.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.beat()

    def beat(self) -> None:
        """Refreshes the lock's modification time (the heartbeat other hosts check)."""
        with contextlib.suppress(OSError):  # a missed beat only shortens the margin
            os.utime(self.path)

    def _take_over(self, holder: dict | None) -> None:
        # Renaming is atomic: of two trainers that both found the lock stale, one renames it
        # and the other gets FileNotFoundError and retries (then finds the winner's lock).
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = _read(aside)
        except FileNotFoundError:
            moved = holder
        if moved != holder:
            # The winner of such a race had already replaced the stale lock with its own: put
            # it back (unless yet another lock appeared) and retry, which refuses this run.
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            except OSError:  # no hard links on this file system
                os.rename(aside, self.path)
                return
            with contextlib.suppress(OSError):
                aside.unlink()
            return
        with contextlib.suppress(OSError):
            aside.unlink()
        log.warning("took over the stale lock %s of %s, which is no longer running",
                    self.path, describe(holder) if holder else "an unknown process")

    def release(self) -> None:
        self._stop.set()
        if self._beater is not None:
            self._beater.join(timeout=5.0)
            self._beater = None
        if self._me is None:
            return
        with contextlib.suppress(FileNotFoundError):
            holder = _read(self.path)
            if holder is not None and (holder.get("pid"), holder.get("host"), holder.get(
                    "start")) == (self._me["pid"], self._me["host"], self._me["start"]):
                self.path.unlink()
        self._me = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

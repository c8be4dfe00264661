"""One run at a time in a folder: a lock file that says who holds it.

`held(path, command)` creates the lock file `path` atomically (O_CREAT | O_EXCL) with the holder's pid,
host, start time and command line, and removes it when the block ends. A lock is stale when its process
is gone: on this host, its pid no longer runs, or runs but started at another time (the pid was reused).
A stale lock, left by a run killed outright (SIGKILL, power loss), is taken over; a live run's lock is
never touched: `Busy` names the process that holds it, or with `wait=True` the caller waits for it.

What a command cleans up at its start (temporary files, snapshots) it cleans only once it holds the
lock of the folder that owns them: their owner is then known to be gone.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no guard around the take-over of a stale lock
    fcntl = None


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file records it."""

    pid: int
    host: str
    started: str  # UTC, ISO 8601
    command: str
    start_ticks: int | None = None  # the process's start time in clock ticks since boot (Linux), against pid reuse

    def describe(self) -> str:
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"pid {self.pid}{where} ({self.command}, started {self.started})"


class Busy(RuntimeError):
    """The folder is held by a live run; the message names its process."""

    def __init__(self, path: Path, holder: Holder, hint: str = ""):
        self.path, self.holder = Path(path), holder
        super().__init__(f"{self.path.parent} is in use by another run: {holder.describe()}; wait for it to end"
                         f"{hint} (its lock: {self.path})")


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (the process's start time); None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return int(fields[19]) if len(fields) > 19 else None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def is_alive(holder: Holder) -> bool:
    """Whether the holder still runs. A lock taken on another host cannot be checked: it counts as live."""
    if holder.host != socket.gethostname():
        return True
    if holder.pid <= 0:  # os.kill(0, ...) would address this process's group
        return False
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    if _zombie(holder.pid):  # killed, not yet reaped by its parent
        return False
    now = _start_ticks(holder.pid)
    return holder.start_ticks is None or now is None or now == holder.start_ticks


def read(path: str | os.PathLike) -> Holder | None:
    """The holder recorded in `path`; None when there is no lock. A file that is not a lock's record
    (emptied, damaged) gives a holder with pid 0, which no process has: stale."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
        return Holder(int(record["pid"]), str(record["host"]), str(record["started"]), str(record["command"]),
                      record.get("start_ticks"))
    except (ValueError, KeyError, TypeError):
        return Holder(0, socket.gethostname(), "?", "unreadable lock file")


def this_process(command: str | None = None) -> Holder:
    if command is None:
        command = shlex.join([Path(sys.executable).name, *sys.argv])
    return Holder(os.getpid(), socket.gethostname(),
                  _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), command,
                  _start_ticks(os.getpid()))


@contextmanager
def _guard(folder: Path):
    """An exclusive flock on the folder itself while a lock is checked and taken: two runs that both find
    a stale lock must not both take it over. The kernel drops it when its process dies."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _create(path: Path, me: Holder) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(asdict(me)))


def acquire(path: str | os.PathLike, command: str | None = None, wait: bool = False, on_wait=None,
            poll_s: float = 0.5, hint: str = "") -> tuple[Holder, Holder | None]:
    """Take the lock `path` (its folder must exist). Returns (this process's record, the stale holder it
    took over, or None). A live holder raises Busy, or with `wait` is waited for: `on_wait(holder)` is
    called once, when the waiting starts."""
    path = Path(path)
    me = this_process(command)
    said = False
    while True:
        with _guard(path.parent):
            holder = read(path)
            if holder is None or not is_alive(holder):
                if holder is not None:
                    path.unlink(missing_ok=True)
                _create(path, me)
                return me, holder
        if not wait:
            raise Busy(path, holder, hint)
        if not said and on_wait is not None:
            on_wait(holder)
            said = True
        time.sleep(poll_s)


def release(path: str | os.PathLike, me: Holder) -> None:
    """Remove the lock if it is still this process's (a lock taken over meanwhile is left alone)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    with _guard(path.parent):
        if read(path) == me:
            path.unlink(missing_ok=True)


@contextmanager
def held(path: str | os.PathLike, command: str | None = None, wait: bool = False, on_wait=None, hint: str = ""):
    """Hold the lock `path` for the block; yields the stale holder taken over (None when there was none)."""
    me, stale = acquire(path, command, wait, on_wait, hint=hint)
    try:
        yield stale
    finally:
        release(path, me)

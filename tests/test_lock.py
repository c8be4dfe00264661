"""core.lock: one run at a time in a folder; a lock whose process is gone is taken over, a live one never."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace

import pytest

from fastcifar.core import lock


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(path, holder: lock.Holder):
    path.write_text(json.dumps(asdict(holder)))


def test_a_lock_is_taken_released_and_records_who_holds_it(tmp_path):
    path = tmp_path / ".lock"
    with lock.held(path, "python -m fastcifar.something --x") as stale:
        assert stale is None
        holder = lock.read(path)
        assert holder.pid == os.getpid() and holder.host == socket.gethostname()
        assert holder.command == "python -m fastcifar.something --x" and lock.is_alive(holder)
    assert not path.exists()


def test_a_live_holder_is_refused_with_its_pid_and_command(tmp_path):
    path = tmp_path / ".lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(path, replace(lock.this_process("python -m fastcifar.pipeline --only J3"), pid=other.pid,
                                 start_ticks=lock._start_ticks(other.pid)))
        with pytest.raises(lock.Busy) as refused:
            lock.acquire(path, "second", hint=", or pass --wait")
        said = str(refused.value)
        assert f"pid {other.pid}" in said and "--only J3" in said and "or pass --wait" in said
        assert str(tmp_path) in said and "\n" not in said
        assert lock.read(path).pid == other.pid  # a live run's lock is never touched
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("how", ["dead pid", "reused pid", "damaged file"])
def test_a_stale_lock_is_taken_over(tmp_path, how):
    path = tmp_path / ".lock"
    me = lock.this_process("killed run")
    if how == "dead pid":
        write_lock(path, replace(me, pid=dead_pid()))
    elif how == "reused pid":  # the pid runs, but it is another process than the one that took the lock
        write_lock(path, replace(me, start_ticks=(me.start_ticks or 0) + 12345))
        if me.start_ticks is None:
            pytest.skip("no /proc here: a reused pid cannot be told apart")
    else:
        path.write_text("")  # emptied by a full disk, say
    with lock.held(path, "new run") as stale:
        assert stale is not None and lock.read(path).command == "new run"
    assert not path.exists()


def test_a_lock_of_another_host_counts_as_live(tmp_path):
    path = tmp_path / ".lock"
    write_lock(path, replace(lock.this_process("elsewhere"), host="another-host", pid=dead_pid()))
    with pytest.raises(lock.Busy, match="on another-host"):
        lock.acquire(path)


def test_release_leaves_a_lock_taken_over_meanwhile(tmp_path):
    path = tmp_path / ".lock"
    me, _ = lock.acquire(path, "first")
    write_lock(path, replace(me, command="someone else"))
    lock.release(path, me)
    assert lock.read(path).command == "someone else"

"""Write files so that a crash never leaves a half-written one behind: temp file, then rename.

Temporary files are named `.<name>.<random>.tmp<suffix>` beside their target. They are removed when the
write fails or is interrupted (KeyboardInterrupt, and SIGTERM under `signals_raise`); one left by a
process killed outright (SIGKILL, power loss) is found by `stale_temporaries` and removed at the next
start of the pipeline.
"""
from __future__ import annotations

import os
import re
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

# mkstemp's random part is 8 characters of [a-z0-9_]
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")


def _mode_for_new_file() -> int:
    """0666 less the umask, what open() gives (mkstemp's 0600 would hide committed evidence from others)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path` (same suffix, for tools that check it); on success it
    replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        move_into_place(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def move_into_place(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Give a finished temporary file normal permissions and rename it to `path` (same folder)."""
    os.chmod(tmp, _mode_for_new_file())
    os.replace(tmp, path)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is named like a temporary file of `atomic_path`."""
    return bool(_TEMP_NAME.match(Path(path).name))


def stale_temporaries(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Temporary files of `atomic_path` under `folder`: left by a process that was killed outright."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")
    return sorted(p for p in candidates if p.is_file() and is_temporary(p))


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives under `signals_raise`.

    A KeyboardInterrupt, so that every cleanup that runs on Ctrl-C (atomic writes, temporary folders,
    papermill's kernel shutdown) also runs when `timeout` or a CI cancel stops the process."""


def _raise_terminated(signum, frame):
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


@contextmanager
def signals_raise():
    """Within the block, SIGTERM raises Terminated (SIGINT already raises KeyboardInterrupt)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_reason(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped the process, in words, and the exit status a shell gives it: 143 for SIGTERM
    (Terminated), 130 for Ctrl-C."""
    return str(exc) or "interrupted", 143 if isinstance(exc, Terminated) else 130


def ensure_writable(folder: str | os.PathLike) -> Path:
    """Make `folder` and write (then remove) a file in it, before work whose results it must take;
    OSError when it cannot."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = write_text(folder / ".writable", "")
    probe.unlink()
    return folder

"""One folder per command run, with what it takes to repeat it.

`<output_dir>/<dataset>/<command>-<UTC time>/` holds the command's outputs plus:
- `config.yaml`: the resolved config (every key, overrides applied); its header names the command
  line that repeats the run from this file alone;
- `run.json`: command, argv, resolved config, seed, versions, device, data provenance (md5 verdict and
  sha256 fingerprint of the pixels), split sizes, git commit, start and end times, status.
- `.lock` while a command works in it (core.lock): a second `train --resume` of the folder is refused
  while the first runs; one left by a run killed outright is taken over, and that run's temporary files
  are removed then (the folder is this command's own, and its owner is gone).
"""
from __future__ import annotations

import datetime as _dt
import json
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import config as configs
from ..core import atomic, env, lock

LOCK_NAME = ".lock"


def plain(value):
    """numpy scalars as numbers, anything else JSON cannot write (paths) as text."""
    return value.item() if hasattr(value, "item") else str(value)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Claim:
    """This process's hold on a run folder (its lock), and the holder of a stale lock it took over."""

    path: Path
    me: lock.Holder
    stale: lock.Holder | None = None

    def release(self) -> None:
        lock.release(self.path / LOCK_NAME, self.me)


def command_line(command: str, argv: list[str] | None) -> str:
    return shlex.join(["python", "-m", f"fastcifar.{command}", *(argv or [])])


def claim(path: str | Path, command: str, argv: list[str] | None = None) -> Claim:
    """Take the run folder's lock, naming this command line in it: lock.Busy while another process works
    in the folder; OSError when the folder cannot be written."""
    path = Path(path)
    me, stale = lock.acquire(path / LOCK_NAME, command_line(command, argv))
    return Claim(path, me, stale)


@dataclass
class RunDir:
    path: Path
    command: str
    config: dict
    manifest: dict = field(default_factory=dict)
    resuming: bool = False  # reopened by --resume: its outputs so far are kept whatever happens
    claim: Claim | None = None
    notes: list = field(default_factory=list)  # what reopening found and did, one line each
    before: dict = field(default_factory=dict)  # {file name: text} of the record files before reopening

    def file(self, name: str) -> Path:
        return self.path / name

    def holds_nothing_yet(self) -> bool:
        """Only what `create` wrote: config.yaml and run.json (and the lock)."""
        return {p.name for p in self.path.iterdir()} <= {"config.yaml", "run.json", LOCK_NAME}

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        if self.claim is not None:
            self.claim.release()
            self.claim = None

    def roll_back(self) -> None:
        """Put config.yaml and run.json back as they were before `reopen` (a resumption refused once the
        data was read)."""
        for name, text in self.before.items():
            atomic.write_text(self.path / name, text)

    def update(self, **entries) -> None:
        """Add entries to run.json and rewrite it (atomically, so a killed run leaves a whole file)."""
        self.manifest.update(entries)
        atomic.write_text(self.path / "run.json", json.dumps(self.manifest, indent=2, default=plain))

    def finish(self, **entries) -> None:
        self.update(status="finished", finished=_now(), **entries)


def create(command: str, config: dict, argv: list[str] | None = None, extra_args: str = "") -> RunDir:
    """Make the run folder (a new one even when two runs start in the same second) and write the
    resolved config and a first run.json."""
    base = Path(config["output_dir"]) / config["dataset"]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = base / (f"{command}-{stamp}" if n == 1 else f"{command}-{stamp}-{n}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise RuntimeError(f"could not create a new run folder under {base}")
    run = None
    try:  # stopped half way (Ctrl-C), the folder goes: nothing was written
        run = RunDir(path, command, config, claim=claim(path, command, argv))
        commit = env.git_commit()
        repeat = f"python -m fastcifar.{command} --config {path / 'config.yaml'}{extra_args}"
        header = (f"Resolved config of `{command}`, {_now()}, commit {commit}.\n"
                  f"Repeat: {repeat}\n"
                  "Every key is listed; the comments say what each one does (configs/*.yaml explain more).")
        atomic.write_text(path / "config.yaml", configs.to_yaml(config, header))
        run.update(command=command, status="running", started=_now(), repeat=repeat,
                   argv=[sys.executable, "-m", f"fastcifar.{command}", *(argv or [])],
                   argv_text=shlex.join(argv or []), config=config, seed=config["seed"], git_commit=commit,
                   versions=env.versions())
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return run


def read_manifest(path: str | Path, command: str) -> dict:
    """The run.json of an earlier run of `command` (ConfigError when it is not one)."""
    path = Path(path)
    try:
        manifest = json.loads((path / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise configs.ConfigError(f"--resume: cannot read {path / 'run.json'} ({exc}); expected the folder of a "
                                  f"{command} run") from None
    if not isinstance(manifest, dict) or manifest.get("command") != command:
        found = manifest.get("command") if isinstance(manifest, dict) else None
        raise configs.ConfigError(f"--resume: {path} is a {found!r} run; expected a {command} run")
    return manifest


def reopen(path: str | Path, command: str, config: dict, argv: list[str] | None = None,
           held: Claim | None = None) -> RunDir:
    """The folder of an earlier run of `command`, to go on with it (train --resume): run.json keeps its
    history and lists each resumption; config.yaml is rewritten when overrides changed the config.

    `held`: the folder's lock, taken before anything was checked. Holding it, this run owns the folder:
    a run.json still saying `running` was left by a run killed outright, and temporary files there are
    that run's; they are removed (said in `notes`)."""
    path = Path(path)
    manifest = read_manifest(path, command)
    run = RunDir(path, command, config, manifest, resuming=True, claim=held)
    run.before = {name: (path / name).read_text(encoding="utf-8") for name in ("config.yaml", "run.json")
                  if (path / name).is_file()}
    previous = manifest.get("status")
    if previous == "running":
        who = f" ({held.stale.describe()})" if held is not None and held.stale is not None else ""
        run.notes.append(f"the last run in this folder{who} ended without a word (killed outright?): run.json "
                         "still said 'running'")
    leftovers = atomic.stale_temporaries(path)
    for tmp in leftovers:
        tmp.unlink(missing_ok=True)
    if leftovers:
        run.notes.append(f"removed {len(leftovers)} temporary file(s) it left: "
                         + ", ".join(str(p.relative_to(path)) for p in leftovers))
    if config != manifest.get("config"):
        header = (f"Resolved config of `{command}`, resumed {_now()}, commit {env.git_commit()}.\n"
                  f"Repeat: {manifest.get('repeat', '')}\n"
                  "Every key is listed; the comments say what each one does (configs/*.yaml explain more).")
        atomic.write_text(path / "config.yaml", configs.to_yaml(config, header))
    entry = {"at": _now(), "argv_text": shlex.join(argv or []), "git_commit": env.git_commit(),
             "previous_status": "killed" if previous == "running" else previous}
    run.update(status="running", resumed=[*manifest.get("resumed", []), entry], config=config, error=None)
    return run

"""One folder per command run, with what it takes to repeat it.

`<output_dir>/<dataset>/<command>-<UTC time>/` holds the command's outputs plus:
- `config.yaml`: the resolved config (every key, overrides applied); its header names the command
  line that repeats the run from this file alone;
- `run.json`: command, argv, resolved config, seed, versions, device, data provenance (md5 verdict and
  sha256 fingerprint of the pixels), split sizes, git commit, start and end times, status.
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
from ..core import atomic, env


def _plain(value):
    """numpy scalars as numbers, anything else JSON cannot write (paths) as text."""
    return value.item() if hasattr(value, "item") else str(value)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunDir:
    path: Path
    command: str
    config: dict
    manifest: dict = field(default_factory=dict)
    resuming: bool = False  # reopened by --resume: its outputs so far are kept whatever happens

    def file(self, name: str) -> Path:
        return self.path / name

    def holds_nothing_yet(self) -> bool:
        """Only what `create` wrote: config.yaml and run.json."""
        return {p.name for p in self.path.iterdir()} <= {"config.yaml", "run.json"}

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def update(self, **entries) -> None:
        """Add entries to run.json and rewrite it (atomically, so a killed run leaves a whole file)."""
        self.manifest.update(entries)
        atomic.write_text(self.path / "run.json", json.dumps(self.manifest, indent=2, default=_plain))

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
    commit = env.git_commit()
    repeat = f"python -m fastcifar.{command} --config {path / 'config.yaml'}{extra_args}"
    header = (f"Resolved config of `{command}`, {_now()}, commit {commit}.\n"
              f"Repeat: {repeat}\n"
              "Every key is listed; the comments say what each one does (configs/*.yaml explain more).")
    atomic.write_text(path / "config.yaml", configs.to_yaml(config, header))
    run = RunDir(path, command, config)
    run.update(command=command, status="running", started=_now(), repeat=repeat,
               argv=[sys.executable, "-m", f"fastcifar.{command}", *(argv or [])],
               argv_text=shlex.join(argv or []), config=config, seed=config["seed"], git_commit=commit,
               versions=env.versions())
    return run


def reopen(path: str | Path, command: str, config: dict, argv: list[str] | None = None) -> RunDir:
    """The folder of an earlier run of `command`, to go on with it (train --resume): run.json keeps its
    history and lists each resumption; config.yaml is rewritten when overrides changed the config."""
    path = Path(path)
    try:
        manifest = json.loads((path / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise configs.ConfigError(f"--resume: cannot read {path / 'run.json'} ({exc}); expected the folder of a "
                                  f"{command} run") from None
    if manifest.get("command") != command:
        raise configs.ConfigError(f"--resume: {path} is a {manifest.get('command')!r} run; expected a {command} run")
    run = RunDir(path, command, config, manifest, resuming=True)
    if config != manifest.get("config"):
        header = (f"Resolved config of `{command}`, resumed {_now()}, commit {env.git_commit()}.\n"
                  f"Repeat: {manifest.get('repeat', '')}\n"
                  "Every key is listed; the comments say what each one does (configs/*.yaml explain more).")
        atomic.write_text(path / "config.yaml", configs.to_yaml(config, header))
    resumed = [*manifest.get("resumed", []), {"at": _now(), "argv_text": shlex.join(argv or []),
                                              "git_commit": env.git_commit()}]
    run.update(status="running", resumed=resumed, config=config, error=None)
    return run

"""What the four config-driven commands share (the `train` command itself is train.py).

    python -m fastcifar.train       --config FILE [overrides]      (or --resume RUN_FOLDER [overrides])
    python -m fastcifar.lr_finder   --config FILE [overrides]
    python -m fastcifar.grid_search --config FILE [overrides]
    python -m fastcifar.evaluate    --config FILE --checkpoint PATH [overrides]

Overrides: `--max_epochs 20`, `--max_epochs=20` or `max_epochs=20`. A user's mistake (config, data
folder, checkpoint) ends with one `error: ...` line on stderr and exit code 2, before any work.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import config as configs, rundir
from ..core import atomic, data, engine, env, lock, models

USER_ERRORS = (configs.ConfigError, data.DataError, engine.CheckpointError, engine.TrainingDiverged, lock.Busy)
# What a resumed run may not change: what shapes the split (the engine compares the training settings).
SPLIT_KEYS = ("dataset", "val_size", "train_limit", "eval_limit")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other user mistake
        usage = " ".join(self.format_usage().split()).replace("usage: ", "")
        raise configs.ConfigError(f"{message}; usage: {usage} [overrides]")


def _parser(command: str, description: str, needs_checkpoint: bool, resumable: bool) -> argparse.ArgumentParser:
    keys = "\n".join(f"  {k.name:<22} {k.help}" for k in configs.KEYS)
    ap = _Parser(
        prog=f"python -m fastcifar.{command}", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter, description=description,
        epilog=f"overrides: --KEY VALUE, --KEY=VALUE or KEY=VALUE (values read as YAML). Keys:\n{keys}")
    ap.add_argument("--config", required=not resumable, metavar="FILE",
                    help="YAML config, e.g. configs/cifar100.yaml" +
                         (" (with --resume: that run's config.yaml unless given)" if resumable else ""))
    if needs_checkpoint:
        ap.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint written by train")
    if resumable:
        ap.add_argument("--resume", metavar="RUN_FOLDER",
                        help="go on with a stopped run in its own folder, from its model_last.pth (saved every "
                             "checkpoint_every epochs); max_epochs may grow, the other settings must match")
    return ap


def resume_differences(ckpt: dict, config: dict, earlier_config: dict) -> dict[str, tuple]:
    """{key: (the run's value, this config's)} for what a resumed run must keep: the training settings
    (the engine's rule: max_epochs may grow), the model, its classes and architecture, and the split."""
    differ = engine.resume_mismatch(ckpt, dataclasses.asdict(configs.train_config(config)),
                                    ckpt.get("data_source"), ckpt.get("train_images"))
    then = {"model": ckpt.get("model_name"), "classes": ckpt.get("num_classes"),
            **{k: ckpt.get("arch", {}).get(k) for k in configs.model_arch(config)}}
    now = {"model": config["model"], "classes": configs.num_classes(config), **configs.model_arch(config)}
    then.update({k: earlier_config[k] for k in SPLIT_KEYS if k in earlier_config})
    now.update({k: config[k] for k in SPLIT_KEYS if k in earlier_config})
    differ.update({k: (then[k], now[k]) for k in now if then.get(k) != now[k]})
    return differ


def _reopen(folder: str, command: str, config_arg: str | None, rest: list[str],
            argv: list[str]) -> tuple[dict, rundir.RunDir]:
    """The config and run folder of a run to resume. ConfigError when the folder cannot be resumed,
    lock.Busy while another process works in it; either way before the folder is touched."""
    path = Path(folder)
    last = path / "model_last.pth"
    if not (path / "run.json").is_file() or not last.is_file():
        raise configs.ConfigError(f"--resume: {path} holds no run.json and model_last.pth; expected the folder of a "
                                  f"{command} run that saved at least one checkpoint (every checkpoint_every epochs)")
    try:
        held = rundir.claim(path, command, argv)
    except OSError as exc:
        raise configs.ConfigError(f"--resume: cannot write to {path} ({exc.strerror or exc}); expected a run folder "
                                  "this user can write") from None
    try:
        earlier = rundir.read_manifest(path, command)
        config = configs.load(config_arg or path / "config.yaml", configs.parse_overrides(rest))
        # Settings are checked before the folder's record is touched (fit checks the data's fingerprint later).
        differ = resume_differences(engine.load_checkpoint(last), config, earlier.get("config") or {})
        if differ:
            changes = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differ.items())
            raise configs.ConfigError(f"--resume: {last} was made with other settings ({changes}); expected its own "
                                      "settings (max_epochs may grow, not shrink below the epochs already run)")
        return config, rundir.reopen(path, command, config, rest, held)
    except BaseException:
        held.release()
        raise


def output_folder(config: dict) -> Path:
    """Where the run folder goes, made and checked writable before any work (ConfigError otherwise)."""
    base = Path(config["output_dir"]) / config["dataset"]
    try:
        return atomic.ensure_writable(base)
    except OSError as exc:
        raise configs.ConfigError(f"output_dir: cannot write to {base} ({exc.strerror or exc}); expected a folder "
                                  "this user can write: set output_dir=PATH (or in the config)") from None


def run_command(command: str, description: str, work, argv: list[str] | None = None,
                needs_checkpoint: bool = False, resumable: bool = False) -> int:
    """Parse, validate, make the run folder (or reopen it with --resume), then the command's own
    `work(config, run, device, checkpoint)` (train.train_from_config, lr_finder.find_lr, grid_search.search_grid,
    evaluate.evaluate_checkpoint).

    Returns the exit status: 0; 2 for a user's mistake (one message, no traceback; a run folder that
    holds nothing yet is removed); 130 or 143 when stopped by Ctrl-C or SIGTERM (run.json says
    `interrupted`; every file in the folder is whole, since they are all written atomically)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    run = None
    try:
        with atomic.signals_raise():
            try:
                args, rest = _parser(command, description, needs_checkpoint, resumable).parse_known_args(argv)
            except SystemExit as exc:  # --help
                return int(exc.code or 0)
            if getattr(args, "resume", None):
                config, run = _reopen(args.resume, command, args.config, rest, argv)
            elif args.config is None:
                raise configs.ConfigError("the following arguments are required: --config (or --resume RUN_FOLDER); "
                                          f"usage: python -m fastcifar.{command} --config FILE [overrides]")
            else:
                config = configs.load(args.config, configs.parse_overrides(rest))
            checkpoint = None
            if needs_checkpoint:
                checkpoint = Path(args.checkpoint)
                if not checkpoint.is_file():
                    raise configs.ConfigError(f"--checkpoint: no file {checkpoint}; expected a checkpoint written "
                                              "by the train command (<run folder>/model_best.pth)")
            device = torch.device(env.default_device() if config["device"] == "auto" else config["device"])
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
            extra = f" --checkpoint {checkpoint}" if checkpoint else ""
            if run is None:
                output_folder(config)
                run = rundir.create(command, config, argv, extra)
            run.update(device=env.device_name(device),
                       checkpoint=os.path.relpath(checkpoint, run.path) if checkpoint else None)
            print(f"{command}: {'resuming in' if run.resuming else 'run folder'} {run.path}", flush=True)
            for note in run.notes:
                print(f"{command}: {note}", flush=True)
            t0 = time.perf_counter()
            work(config, run, device, checkpoint)
            run.finish(seconds=round(time.perf_counter() - t0, 1))
            print(f"{command}: done in {time.perf_counter() - t0:.1f} s; outputs in {run.path}", flush=True)
            return 0
    except USER_ERRORS as exc:
        if run is not None and not run.resuming and run.holds_nothing_yet():
            run.remove()  # the mistake was found before any output: leave nothing behind
        elif run is not None and run.resuming and isinstance(exc, engine.ResumeRefused):
            run.roll_back()  # refused once the data was read, before any training: the folder as it was
        elif run is not None:
            run.update(status="failed", error=str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as exc:
        said, status = atomic.stop_reason(exc)
        if run is None:
            print(f"{command}: {said}; nothing was written", file=sys.stderr, flush=True)
        else:
            run.update(status="interrupted", error=said)
            resume = (f"; go on with: python -m fastcifar.{command} --resume {shlex.quote(str(run.path))}"
                      if resumable and run.file("model_last.pth").is_file() else "")
            print(f"{command}: {said}; what was finished is in {run.path}{resume}", file=sys.stderr, flush=True)
        return status
    except BaseException as exc:
        if run is not None:
            run.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if run is not None:
            run.release()


def load_splits(config: dict, run: rundir.RunDir | None = None) -> data.Splits:
    """The stratified train/val split and the test set that `config` asks for; recorded in run.json."""
    t0 = time.perf_counter()
    cifar = data.load_cifar(config["dataset"], config["data_dir"])
    if config["val_size"] >= len(cifar.train):
        raise configs.ConfigError(f"val_size must be below the {len(cifar.train)} training images of "
                                  f"{cifar.folder}, got {config['val_size']}")
    splits = data.make_splits(cifar, config["val_size"], config["seed"], config["train_limit"],
                              config["eval_limit"])
    if run is not None:
        run.update(data={"source": splits.source, "folder": str(cifar.folder), "classes": len(splits.classes),
                         "train_images": len(splits.train), "val_images": len(splits.val),
                         "test_images": len(splits.test), "split_sha256": split_fingerprint(splits),
                         "mean": list(splits.mean), "std": list(splits.std)})
    print(f"data: {splits.source}; train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return splits


def split_fingerprint(splits: data.Splits) -> str:
    """sha256 (12 hex) of the images and labels of train, val and test in order: the same number means
    the same split."""
    digest = hashlib.sha256()
    for split in (splits.train, splits.val, splits.test):
        digest.update(np.ascontiguousarray(split.images).tobytes())
        digest.update(split.labels.astype(np.int64).tobytes())
    return digest.hexdigest()[:12]


def build_model(config: dict, **arch_changes) -> torch.nn.Module:
    """The config's model, initialised from its seed (so a run repeats)."""
    torch.manual_seed(config["seed"])
    arch = {**configs.model_arch(config), **arch_changes}
    return models.build_model(config["model"], configs.num_classes(config), **arch)


def describe_model(config: dict, model: torch.nn.Module) -> str:
    arch = models.arch_of(model)
    detail = ", ".join(f"{k} {v}" for k, v in arch.items())
    return f"{models.label(config['model'], arch)} ({detail}{', ' if detail else ''}" \
           f"{models.count_params(model):,} parameters)"


def write_json(path: Path, payload: dict) -> Path:
    return atomic.write_text(path, json.dumps(payload, indent=2, default=rundir.plain))

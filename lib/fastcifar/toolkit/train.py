"""The `train` command: sanity checks, then full training with the config's settings.

    python -m fastcifar.train --config FILE [overrides]      (or --resume RUN_FOLDER [overrides])

What every command shares (parsing, run folder, data, model) is in commands.py.
"""
from __future__ import annotations

import shlex
import sys
import time

import torch

from . import commands, config as configs, rundir
from ..core import engine, models


def train_from_config(config: dict, run: rundir.RunDir, device: torch.device, checkpoint=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core import plots, sanity

    splits = commands.load_splits(config, run)
    model = commands.build_model(config)
    print(f"model: {commands.describe_model(config, model)}", flush=True)
    run.update(parameters=models.count_params(model), arch=models.arch_of(model))
    cfg = configs.train_config(config)
    progress = None if config["progress"] else False  # bars on a terminal; elsewhere a line per epoch
    if device.type == "cpu":
        print(f"train: {cpu_estimate(model, splits, cfg, device)}", flush=True)
    if config["sanity_checks"] and not run.resuming:
        t0 = time.perf_counter()
        print("sanity: checks before training (sanity_checks: false skips them)", flush=True)
        checks = sanity.run_checks(model, splits, device, config["seed"], config["overfit_images"],
                                   config["overfit_steps"], config["overfit_lr"], config["weight_decay"],
                                   run.file("overfit.png"), say=lambda line: print(f"sanity: {line}", flush=True),
                                   progress=progress)
        commands.write_json(run.file("sanity.json"), checks)
        print(f"sanity: {time.perf_counter() - t0:.1f} s; sanity.json, overfit.png", flush=True)
    result = engine.fit(model, splits, cfg, "model", config["model"], run.path, device, resume=run.resuming,
                       progress=progress, tensorboard_dir=run.file("tensorboard") if config["tensorboard"] else None)
    fig = plots.training_curves({config["model"]: result.history}, run.file("curves.png"),
                                label_smoothing=cfg.label_smoothing)
    plt.close(fig)
    best = result.history.loc[result.history.val_acc.idxmax()]
    summary = {"best_val_acc": result.best_val_acc, "best_epoch": int(best.epoch),
               "final": result.history.iloc[-1].to_dict(), "train_s": result.train_s,
               "images_per_s": result.images_per_s, "best_checkpoint": result.best_path.name,  # in the run folder
               "log_csv": "model_log.csv"}
    commands.write_json(run.file("summary.json"), summary)
    run.update(result=summary)
    print(f"train: best val accuracy {result.best_val_acc:.2f}% at epoch {int(best.epoch)}/{cfg.epochs}; "
          f"{result.train_s:.1f} s, {result.images_per_s:,.0f} img/s", flush=True)
    print("next: python -m fastcifar.evaluate --config " + shlex.quote(str(run.file("config.yaml"))) +
          " --checkpoint " + shlex.quote(str(result.best_path)), flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def cpu_estimate(model, splits, cfg, device) -> str:
    """One line, said before any long work on a CPU: that it is a CPU, and about how long an epoch takes,
    from a few timed steps."""
    step = engine.seconds_per_step(model, splits, cfg, device)
    steps = max(1, len(splits.train) // cfg.batch_size)
    return (f"training on the CPU (no CUDA GPU in use): an epoch of {len(splits.train):,} images takes about "
            f"{_duration(step * steps)} here, {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} about "
            f"{_duration(step * steps * cfg.epochs)} "
            f"(timed on a few batches of {min(cfg.batch_size, len(splits.train))}); train_limit, eval_limit and "
            "smaller widths make a trial run short")


def main(argv: list[str] | None = None) -> int:
    return commands.run_command("train", "Sanity checks, then full training with the config's settings (the same "
                                "train.fit the notebooks use); checkpoints, CSV and TensorBoard logs, curves.",
                                train_from_config, argv, resumable=True)


if __name__ == "__main__":
    sys.exit(main())

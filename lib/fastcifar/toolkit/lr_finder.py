"""Learning-rate finder (CIFAR-100 report, section 4).

    python -m fastcifar.lr_finder --config FILE [overrides]

An untrained model is trained for `lr_finder_steps` steps with the config's optimizer, batch size and
augmentation while the learning rate grows exponentially from `lr_finder_min` to `lr_finder_max`; the
sweep stops early once the smoothed loss passes `lr_finder_divergence` times its minimum. Writes
lr_finder.csv (lr, loss, smoothed and centred loss), lr_finder.png and lr_finder.json (the suggestion).

Two smoothings of the loss: `smoothed`, a running (causal) exponential mean, decides when to stop;
it lags behind the sweep (by about smoothing/(1 - smoothing) steps, a large share of a decade), so
the suggestion reads `centred`, a moving average over a window centred on each step (half that many
steps each side, fewer near the ends so the window stays centred), which does not lag:

- steepest: the learning rate where the centred loss falls fastest against log(lr);
- range: the contiguous learning rates around it where it falls at least half as fast;
- value: the steepest learning rate (also given: the minimum's lr / 10, the other common rule).
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import commands, config as configs
from ..core import atomic, engine, plots
from ..core.data import GpuLoader


def lr_range_test(model: torch.nn.Module, loader, cfg: "engine.TrainConfig", device, lr_min: float, lr_max: float,
             steps: int, smoothing: float = 0.95, divergence: float = 4.0, progress: bool = True):
    """Loss at each learning rate of an exponential sweep -> DataFrame(step, lr, loss, smoothed)."""
    import pandas as pd

    device = torch.device(device)
    model.train()
    optimizer = engine.make_optimizer(model.parameters(), cfg, lr=lr_min)
    rows, running, best = [], RunningMean(smoothing), math.inf
    batches = iter(loader)
    bar = tqdm(range(steps), desc="lr sweep", disable=None if progress else True, file=sys.stdout, mininterval=2.0)
    for step in bar:
        lr = lr_min * (lr_max / lr_min) ** (step / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            x, y = next(batches)
        except StopIteration:  # the training split is shorter than the sweep: next epoch
            batches = iter(loader)
            x, y = next(batches)
        with engine.autocast(device, cfg.bf16):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            break
        smoothed = running.add(value)
        rows.append({"step": step + 1, "lr": lr, "loss": value, "smoothed": smoothed})
        best = min(best, smoothed)
        bar.set_postfix(lr=f"{lr:.2e}", loss=f"{smoothed:.3f}")
        if step > steps // 10 and smoothed > divergence * best:
            break
    bar.close()
    return pd.DataFrame(rows)


class RunningMean:
    """The causal exponential mean of the loss that stops the sweep, bias-corrected so that its first
    values are not pulled towards 0."""

    def __init__(self, smoothing: float):
        self.smoothing, self.average, self.count = smoothing, 0.0, 0

    def add(self, value: float) -> float:
        """Take the next loss; return the smoothed loss up to it."""
        self.average = self.smoothing * self.average + (1 - self.smoothing) * value
        self.count += 1
        return self.average / (1 - self.smoothing ** self.count)


def centred(losses: np.ndarray, smoothing: float) -> np.ndarray:
    """Moving average centred on each point: as smooth as the running mean's reach allows, and no lag."""
    losses = np.asarray(losses, dtype=float)
    n = len(losses)
    reach = int(round(smoothing / (1 - smoothing) / 2))
    sums = np.r_[0.0, np.cumsum(losses)]
    half = np.minimum(reach, np.minimum(np.arange(n), n - 1 - np.arange(n)))  # symmetric even at the ends
    lo, hi = np.arange(n) - half, np.arange(n) + half + 1
    return (sums[hi] - sums[lo]) / (hi - lo)


def suggest(sweep, smoothing: float = 0.95) -> dict:
    """Suggested range and value from a sweep (see the module docstring); adds its `centred` column."""
    if len(sweep) < 5:
        raise ValueError(f"the sweep has {len(sweep)} points; it needs at least 5 (raise lr_finder_steps or "
                         "lower lr_finder_min)")
    sweep["centred"] = centred(sweep.loss.to_numpy(), smoothing)
    lrs, smoothed = sweep.lr.to_numpy(), sweep.centred.to_numpy()
    lowest = int(np.argmin(smoothed))
    slope = np.gradient(smoothed, np.log10(lrs))
    start = min(max(1, len(lrs) // 20), lowest)  # the first points carry the running mean's start-up
    window = slope[start:lowest + 1] if lowest > start else slope[start:start + 1]
    steepest = start + int(np.argmin(window))
    lo = hi = steepest
    if slope[steepest] < 0:
        while lo > start and slope[lo - 1] <= slope[steepest] / 2:
            lo -= 1
        while hi < lowest and slope[hi + 1] <= slope[steepest] / 2:
            hi += 1
    return {"value": float(lrs[steepest]), "range": [float(lrs[lo]), float(lrs[hi])],
            "steepest_lr": float(lrs[steepest]), "steepest_slope_per_decade": float(slope[steepest]),
            "min_loss_lr": float(lrs[lowest]), "min_loss": float(smoothed[lowest]),
            "min_loss_lr_over_10": float(lrs[lowest] / 10), "points": int(len(lrs)),
            "stopped_at_lr": float(lrs[-1])}


def lr_finder_figure(sweep, suggestion: dict, path, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(sweep.lr, sweep.loss, color="0.75", lw=0.8, label="loss")
    ax.plot(sweep.lr, sweep.smoothed, "C0", lw=0.8, ls=":", label="running mean (stops the sweep)")
    ax.plot(sweep.lr, sweep.centred, "C0", label="centred mean (the suggestion)")
    ax.axvspan(*suggestion["range"], color="C2", alpha=0.2, label="suggested range")
    ax.axvline(suggestion["value"], color="C2", ls="--", label=f"suggested lr {suggestion['value']:.2g}")
    ax.plot([suggestion["min_loss_lr"]], [suggestion["min_loss"]], "C3o", label="minimum")
    top = max(sweep.centred.iloc[: max(1, len(sweep) // 10)].max(), suggestion["min_loss"]) * 1.15
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title=title or "learning-rate finder",
           ylim=(suggestion["min_loss"] * 0.9, top))
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save_figure(fig, path)
    plt.close(fig)


def find_lr(config: dict, run, device, checkpoint=None) -> None:
    splits = commands.load_splits(config, run)
    model = commands.build_model(config)
    print(f"model: {commands.describe_model(config, model)}", flush=True)
    cfg = configs.train_config(config)
    channels_last = engine.uses_channels_last(cfg, device)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    loader = GpuLoader(splits.train, cfg.batch_size, device, splits.mean, splits.std, train=True, cutout=cfg.cutout,
                       seed=cfg.seed, channels_last=channels_last)
    sweep = lr_range_test(model, loader, cfg, device, config["lr_finder_min"], config["lr_finder_max"],
                     config["lr_finder_steps"], config["lr_finder_smoothing"], config["lr_finder_divergence"],
                     config["progress"])
    try:
        suggestion = suggest(sweep, config["lr_finder_smoothing"])
    except ValueError as exc:
        raise configs.ConfigError(f"lr_finder_steps: {exc}") from None
    with atomic.atomic_path(run.file("lr_finder.csv")) as tmp:
        sweep.to_csv(tmp, index=False)
    commands.write_json(run.file("lr_finder.json"), {"optimizer": cfg.optimizer, "weight_decay": cfg.weight_decay,
                                                      "batch_size": cfg.batch_size, **suggestion})
    lr_finder_figure(sweep, suggestion, run.file("lr_finder.png"),
                 f"LR finder: {config['model']} on {config['dataset']}, {cfg.optimizer}, batch {cfg.batch_size}")
    run.update(result=suggestion)
    print(f"lr_finder: suggested range {suggestion['range'][0]:.2e} .. {suggestion['range'][1]:.2e}, value "
          f"{suggestion['value']:.2e} (steepest descent); loss minimum at {suggestion['min_loss_lr']:.2e} "
          f"(/10: {suggestion['min_loss_lr_over_10']:.2e}); {suggestion['points']} points", flush=True)
    print(f"next: try it with `lr={suggestion['value']:.2g}` as an override, or put it in grid_lr", flush=True)


def main(argv: list[str] | None = None) -> int:
    return commands.run_command("lr_finder", "Exponential learning-rate sweep: smoothed loss against lr, "
                                "suggested range and value.", find_lr, argv)


if __name__ == "__main__":
    sys.exit(main())

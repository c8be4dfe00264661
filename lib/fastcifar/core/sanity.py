"""The CIFAR-100 report's checks before training (sections 2.1, 2.3 and 3), as one call.

- trivial baselines: majority class and uniform random guesses, on validation and test;
- the initial loss of the untrained model against ln(num_classes);
- the small-sample overfit: a copy of the untrained model trained on `overfit_images` training images
  (no augmentation) must drive its loss towards zero.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from . import engine, plots
from .data import Splits, to_tensor


def run_checks(model: torch.nn.Module, splits: Splits, device, seed: int, overfit_images: int = 64,
               overfit_steps: int = 50, overfit_lr: float = 0.1, weight_decay: float = 0.0,
               figure_path=None, say=None, progress: bool | None = False) -> dict:
    """Run every check on an untrained `model` (left untouched) and return their results. `say(line)`, when
    given, hears each check's result as soon as it is known; `progress` is the overfit steps' bar (as in
    engine.fit)."""
    say = say or (lambda line: None)
    num_classes = len(splits.classes)
    baselines = {split: engine.trivial_baselines(splits.train.labels, getattr(splits, split).labels, num_classes,
                                                seed) for split in ("val", "test")}
    say(_baselines_line(baselines))

    n_probe = min(512, len(splits.val))
    probe_x = to_tensor(splits.val.images[:n_probe], device, splits.mean, splits.std)
    probe_y = torch.as_tensor(splits.val.labels[:n_probe], device=device)
    probe_model = copy.deepcopy(model).to(device)
    first_loss = engine.initial_loss(probe_model, probe_x, probe_y)
    expected = math.log(num_classes)
    initial = {"observed": first_loss, "expected_ln_classes": expected,
               "relative_gap": abs(first_loss - expected) / expected, "images": n_probe}
    say(_initial_line(initial))

    n = min(overfit_images, len(splits.train))
    pick = np.random.default_rng(seed).permutation(len(splits.train))[:n]
    x = to_tensor(splits.train.images[pick], device, splits.mean, splits.std)
    y = torch.as_tensor(splits.train.labels[pick], device=device)
    torch.manual_seed(seed)
    overfit_model = copy.deepcopy(model).to(device)
    losses = engine.overfit_batch(overfit_model, x, y, steps=overfit_steps, lr=overfit_lr, weight_decay=weight_decay,
                                  progress=progress)
    with torch.no_grad():
        overfit_model.train()  # the statistics of this very batch, as during the steps
        batch_acc = 100.0 * (overfit_model(x).argmax(1) == y).float().mean().item()
    result = {
        "baselines_pct": baselines,
        "initial_loss": initial,
        "overfit": {"images": n, "steps": overfit_steps, "lr": overfit_lr, "weight_decay": weight_decay,
                    "optimizer": "sgd momentum 0.9", "first_loss": losses[0], "final_loss": losses[-1],
                    "final_batch_acc_pct": batch_acc, "losses": losses},
    }
    say(_overfit_line(result["overfit"]))
    if figure_path is not None:
        overfit_figure(losses, n, figure_path)
    return result


def _baselines_line(b: dict) -> str:
    return (f"baselines (val / test accuracy %): majority {b['val']['majority class']:.2f} / "
            f"{b['test']['majority class']:.2f}, uniform random {b['val']['uniform random']:.2f} / "
            f"{b['test']['uniform random']:.2f}, chance {b['val']['chance (1/classes)']:.2f}")


def _initial_line(init: dict) -> str:
    return (f"initial loss {init['observed']:.4f} vs ln(classes) {init['expected_ln_classes']:.4f} "
            f"({100 * init['relative_gap']:.1f}% apart)")


def _overfit_line(over: dict) -> str:
    return (f"overfit {over['images']} images, {over['steps']} steps at lr {over['lr']:g}: loss "
            f"{over['first_loss']:.4f} -> {over['final_loss']:.4f}, batch accuracy {over['final_batch_acc_pct']:.1f}%")


def summary_lines(result: dict) -> list[str]:
    return [_baselines_line(result["baselines_pct"]), _initial_line(result["initial_loss"]),
            _overfit_line(result["overfit"])]


def overfit_figure(losses: list[float], images: int, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set(xlabel="step (one batch: step = epoch)", ylabel="training loss", yscale="log",
           title=f"overfit check on {images} training images")
    fig.tight_layout()
    plots.save_figure(fig, path)
    plt.close(fig)

"""Figures both wings draw: training curves (the notebooks and the train command) and the one way every
figure is written to disk (`save_figure`, also used by the sanity checks and the toolkit's commands)."""
from __future__ import annotations

from pathlib import Path


def save_figure(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def training_curves(histories: dict, path=None):
    """Loss and accuracy per epoch, train against validation, one colour per run."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, h) in enumerate(histories.items()):
        colour = f"C{i}"
        ax_loss.plot(h.epoch, h.train_loss, colour, ls="--", label=f"{name} train")
        ax_loss.plot(h.epoch, h.val_loss, colour, label=f"{name} val")
        ax_acc.plot(h.epoch, h.train_acc, colour, ls="--", label=f"{name} train")
        ax_acc.plot(h.epoch, h.val_acc, colour, label=f"{name} val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (train: augmented, with smoothing)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)

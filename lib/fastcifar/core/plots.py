"""Figures both wings draw: training curves (the notebooks and the train command), confusion matrices
(J5 and the evaluate command), and the one way every figure is written to disk (`save_figure`, also
used by the sanity checks and the toolkit's commands)."""
from __future__ import annotations

from pathlib import Path


def save_figure(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def integer_epochs(ax) -> None:
    """Whole epochs on the x axis (a short run would otherwise get ticks at 1.25, 1.5, ...)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def training_curves(histories: dict, path=None, label_smoothing: float | None = None):
    """Loss and accuracy per epoch, train against validation, one colour per run. The loss panel's title
    names the label smoothing of the training loss when it is not 0: `label_smoothing`, else what the
    histories record (engine.fit puts it in a history's `attrs`)."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, h) in enumerate(histories.items()):
        colour = f"C{i}"
        ax_loss.plot(h.epoch, h.train_loss, colour, ls="--", label=f"{name} train")
        ax_loss.plot(h.epoch, h.val_loss, colour, label=f"{name} val")
        ax_acc.plot(h.epoch, h.train_acc, colour, ls="--", label=f"{name} train")
        ax_acc.plot(h.epoch, h.val_acc, colour, label=f"{name} val")
    if label_smoothing is None:
        recorded = {getattr(h, "attrs", {}).get("label_smoothing") for h in histories.values()}
        label_smoothing = recorded.pop() if len(recorded) == 1 else None
    smoothing = f", label smoothing {label_smoothing:g}" if label_smoothing else ""
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"loss (train: augmented{smoothing})")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        integer_epochs(ax)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def confusion_figure(confusion, classes: list[str], path, title: str):
    """A confusion matrix (rows: true class, columns: predicted) coloured by the share of each true
    class, with the counts written in when there are at most 20 classes."""
    import matplotlib.pyplot as plt
    import numpy as np

    confusion = np.asarray(confusion)
    n = len(classes)
    rows = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    size = 7 if n <= 20 else 11
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=6,
                            color="black" if share[i, j] > 0.5 else "white")
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.tight_layout()
    return save_figure(fig, path)

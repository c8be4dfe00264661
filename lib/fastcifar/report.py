"""Tables, decision rules, final selection and plots for the notebooks."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from . import atomic

SEED_COLUMNS = {"id": "ID", "variant": "Variant", "accuracy": "Test acc. (%)", "val_accuracy": "Val acc. (%)",
                "lat_mean_ms": "Mean lat. (ms)", "lat_p95_ms": "p95 lat. (ms)", "size_mb": "Size (MB)"}


# ---------------------------------------------------------------- decision rules (J4 seed)

def keep_fp16(fp32_acc: float, fp16_acc: float, max_drop: float = 0.5) -> bool:
    """J4-03: FP16 is kept only if test accuracy drops by less than `max_drop` points."""
    return fp32_acc - fp16_acc < max_drop


def keep_channels_last(base_p95: float, cl_p95: float, min_gain: float = 0.05) -> bool:
    """J4-13: channels_last is kept only if it cuts latency by more than `min_gain` (5%)."""
    return (base_p95 - cl_p95) / base_p95 > min_gain


def select_final(df, bar: float, accuracy_column: str = "val_accuracy", latency_column: str = "lat_p95_ms"):
    """The final candidate: lowest p95 latency among rows whose *validation* accuracy clears `bar`.
    The test set plays no part in the choice. Returns the chosen row (a pandas Series)."""
    import pandas as pd

    acc = pd.to_numeric(df[accuracy_column], errors="coerce")
    lat = pd.to_numeric(df[latency_column], errors="coerce")
    eligible = df[(acc >= bar) & lat.notna()]
    if eligible.empty:
        best = acc.max()
        raise ValueError(f"no variant reaches {bar}% {accuracy_column} (best is {best:.2f}%): lower the bar or "
                         "train longer (J3 points of attention: more epochs, cutout)")
    return eligible.loc[lat[eligible.index].idxmin()]


def aggregate_runs(df):
    """One row per id from repeated runs: latency columns averaged, p95 spread across runs added."""
    import pandas as pd

    from .bench import numeric_columns

    df = numeric_columns(df.copy())
    timing = [c for c in df.columns if c.startswith(("lat_", "gpu_"))]
    out = []
    for vid, group in df.groupby("id", sort=False):
        row = group.iloc[0].copy()
        for c in timing:
            row[c] = pd.to_numeric(group[c]).mean()
        p95 = pd.to_numeric(group["lat_p95_ms"])
        row["run"] = np.nan  # an aggregate of several runs; `runs` says how many (run stays a number column)
        row["runs"] = len(group)
        row["p95_spread_pct"] = 100 * (p95.max() - p95.min()) / p95.min() if len(group) > 1 else 0.0
        out.append(row)
    return pd.DataFrame(out).reset_index(drop=True)


# ---------------------------------------------------------------- tables

def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(df, columns: dict[str, str] | None = None, digits: dict[str, int] | None = None) -> str:
    """A GitHub markdown table of `df` (pandas' to_markdown needs an extra package)."""
    columns = columns or {c: c for c in df.columns}
    digits = digits or {}
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for _, row in df.astype(object).iterrows():  # keep ints as ints
        lines.append("| " + " | ".join(_cell(row.get(c), digits.get(c, 2 if "acc" in c else 4)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def seed_table(df, extra: dict[str, str] | None = None):
    """The sprint plan's table (ID, variant, accuracy, mean and p95 latency, size) as a DataFrame."""
    cols = {**SEED_COLUMNS, **(extra or {})}
    present = [c for c in cols if c in df.columns]
    return df[present].rename(columns={c: cols[c] for c in present})


def update_readme(readme: str | Path, table_md: str, tag: str = "final-table") -> bool:
    """Replace the text between <!-- tag:start --> and <!-- tag:end --> in README; False if no markers."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- {tag}:start -->\n).*?(<!-- {tag}:end -->)", re.S)
    if not pattern.search(text):
        return False
    atomic.write_text(readme, pattern.sub(lambda m: m.group(1) + table_md + m.group(2), text))
    return True


# ---------------------------------------------------------------- plots

def _save(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def image_grid(images: np.ndarray, labels: np.ndarray, classes: list[str], path=None, per_row: int = 8, title=""):
    import matplotlib.pyplot as plt

    n = len(images)
    rows = -(-n // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * 1.2, rows * 1.35), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, lab in zip(axes.flat, images, labels):
        ax.imshow(img)
        ax.set_title(classes[int(lab)], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


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
    return _save(fig, path)


def pareto_plot(df, bar: float, path=None, final_id: str | None = None, accuracy_column: str = "accuracy"):
    """Test accuracy against p95 latency (log scale); the frontier joins variants no other beats on both."""
    import matplotlib.pyplot as plt
    import pandas as pd

    d = df.assign(_lat=pd.to_numeric(df.lat_p95_ms, errors="coerce"),
                  _acc=pd.to_numeric(df[accuracy_column], errors="coerce")).dropna(subset=["_lat", "_acc"])
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter(d._lat, d._acc, c="C0")
    for _, r in d.iterrows():
        ax.annotate(str(r["id"]), (r._lat, r._acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    frontier, best = [], -np.inf
    for _, r in d.sort_values(["_lat", "_acc"], ascending=[True, False]).iterrows():
        if r._acc > best:
            frontier.append((r._lat, r._acc))
            best = r._acc
    if frontier:
        ax.step(*zip(*frontier), where="post", c="C1", lw=1, label="Pareto frontier")
    if final_id is not None and (d["id"] == final_id).any():
        r = d[d["id"] == final_id].iloc[0]
        ax.scatter([r._lat], [r._acc], s=160, facecolors="none", edgecolors="C3", lw=2, label=f"final: {final_id}")
    ax.axhline(bar, c="C2", ls=":", label=f"bar {bar:g}%")
    ax.set_xscale("log")
    ax.set(xlabel="p95 latency at batch 1 (ms, log scale)", ylabel=f"{accuracy_column.replace('_', ' ')} (%)",
           title="Accuracy against latency")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def latency_histograms(samples: dict[str, np.ndarray], path=None):
    """Distribution of per-call latency for each variant (log x), mean and p95 marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    all_ms = np.concatenate([np.asarray(s) for s in samples.values()])
    bins = np.logspace(np.log10(all_ms.min() * 0.9), np.log10(all_ms.max() * 1.1), 120)
    for i, (name, s) in enumerate(samples.items()):
        ax.hist(s, bins=bins, histtype="step", color=f"C{i % 10}", label=name)
        ax.axvline(np.percentile(s, 95), color=f"C{i % 10}", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set(xlabel="latency per call (ms, log scale; dotted: p95)", ylabel="calls", title="Batch-1 latency distributions")
    ax.legend(fontsize=7)
    return _save(fig, path)

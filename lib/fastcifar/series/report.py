"""Tables, decision rules, final selection and plots for the notebooks.

The plots the toolkit draws too (`training_curves`) and `markdown_table` live in core (plots, tables);
they are imported here so that the notebooks keep calling them as `report.<name>`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import atomic
from ..core.plots import integer_epochs, save_figure, training_curves  # noqa: F401
from ..core.tables import markdown_table  # noqa: F401

SEED_COLUMNS = {"id": "ID", "variant": "Variant", "accuracy": "Test acc. (%)", "val_accuracy": "Val acc. (%)",
                "lat_mean_ms": "Mean lat. (ms)", "lat_p95_ms": "p95 lat. (ms)", "size_mb": "Size (MB)"}

# The sprint plan's numbers, defined here only: the notebooks' parameters default to None, meaning these.
SEED_BAR = 85.0                 # accuracy bar (%), judged on validation accuracy
FP16_MAX_DROP = 0.5             # J4-03: FP16 is kept when test accuracy drops by less than this (points)
CHANNELS_LAST_MIN_GAIN = 0.05   # J4-13: channels_last is kept when p95 improves by more than this share


@dataclass(frozen=True)
class SeedRules:
    """The seed's bar and J4's two keep/drop thresholds, as one run uses them."""

    bar: float = SEED_BAR
    fp16_max_drop: float = FP16_MAX_DROP
    channels_last_min_gain: float = CHANNELS_LAST_MIN_GAIN


def seed_rules(bar: float | None = None, fp16_max_drop: float | None = None,
               channels_last_min_gain: float | None = None) -> SeedRules:
    """A notebook's values of the rules; None (the parameters' default) means the sprint plan's."""
    given = {"bar": bar, "fp16_max_drop": fp16_max_drop, "channels_last_min_gain": channels_last_min_gain}
    return SeedRules(**{k: float(v) for k, v in given.items() if v is not None})


# ---------------------------------------------------------------- decision rules (J4 seed)

def keep_fp16(fp32_acc: float, fp16_acc: float, max_drop: float = FP16_MAX_DROP) -> bool:
    """J4-03: FP16 is kept only if test accuracy drops by less than `max_drop` points."""
    return bool(fp32_acc - fp16_acc < max_drop)


def keep_channels_last(base_p95: float, cl_p95: float, min_gain: float = CHANNELS_LAST_MIN_GAIN) -> bool:
    """J4-13: channels_last is kept only if it cuts latency by more than `min_gain` (5%)."""
    return bool((base_p95 - cl_p95) / base_p95 > min_gain)


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


def fastest(df, ids=None):
    """The measured row with the lowest p95 latency (among `ids` when given), or None."""
    import pandas as pd

    d = df if ids is None else df[df["id"].isin(list(ids))]
    lat = pd.to_numeric(d["lat_p95_ms"], errors="coerce")
    d = d[lat.notna()]
    return None if d.empty else d.loc[lat[d.index].idxmin()]


def fastest_over(rows, threshold: float):
    """(row, met): the measured row with the lowest p95 whose validation accuracy reaches `threshold`
    (met=True); when none does, the most accurate measured row (met=False); (None, False) when
    nothing was measured. The rule behind B1, F1 and F2: the test set plays no part."""
    import pandas as pd

    measured = rows[pd.to_numeric(rows["lat_p95_ms"], errors="coerce").notna()]
    if measured.empty:
        return None, False
    try:
        return select_final(measured, threshold), True
    except ValueError:
        return measured.loc[pd.to_numeric(measured.val_accuracy).idxmax()], False


@dataclass
class SeedDecisions:
    """J4 on B1: the seed's rows O1-O3 (ids of the measured variants they come from), the keep/drop
    verdicts of its rules, and one line of explanation per decision."""

    rows: list = field(default_factory=list)     # row dicts renamed O1, O2, O3
    origin: dict = field(default_factory=dict)   # O-id -> id of the measured variant
    keep: dict = field(default_factory=dict)     # "fp16" / "channels_last" -> bool
    lines: list = field(default_factory=list)


def seed_decisions(rows, ref_id: str, candidates: dict, fp16_max_drop: float = FP16_MAX_DROP,
                   channels_last_min_gain: float = CHANNELS_LAST_MIN_GAIN) -> SeedDecisions:
    """Apply the seed's rules to the variants of one model. `candidates` maps O1 (FP16), O2 (FP16 +
    compile) and O3 (channels_last) to the ids of the variants that may stand for them (the fastest
    measured one does). FP16 is kept when test accuracy drops by less than `fp16_max_drop` points
    (J4-03); channels_last when p95 improves by more than `channels_last_min_gain` (J4-13)."""
    ref = rows[rows["id"] == ref_id].iloc[0]
    out = SeedDecisions()
    what = {"O1": "FP16", "O2": "FP16 + compile", "O3": "channels_last"}
    picked = {}
    for oid, ids in candidates.items():
        row = fastest(rows, ids)
        if row is None:
            out.lines.append(f"{oid} ({what.get(oid, oid)}): not measured here (needs CUDA / compile)")
            continue
        picked[oid] = row
        out.origin[oid] = row["id"]
        out.rows.append({**row.to_dict(), "id": oid})
    if "O1" in picked:
        o1 = picked["O1"]
        out.keep["fp16"] = keep_fp16(ref.accuracy, o1.accuracy, fp16_max_drop)
        out.lines.append(f"FP16: test accuracy {ref.accuracy:.2f}% -> {o1.accuracy:.2f}% (drop "
                         f"{ref.accuracy - o1.accuracy:+.2f} pt, limit {fp16_max_drop}): "
                         f"{'KEPT' if out.keep['fp16'] else 'DROPPED'}")
    if "O3" in picked:
        o3 = picked["O3"]
        out.keep["channels_last"] = keep_channels_last(ref.lat_p95_ms, o3.lat_p95_ms, channels_last_min_gain)
        out.lines.append(f"channels_last: p95 {ref.lat_p95_ms:.4f} -> {o3.lat_p95_ms:.4f} ms (gain "
                         f"{100 * (1 - o3.lat_p95_ms / ref.lat_p95_ms):+.1f}%, needs > {100 * channels_last_min_gain:.0f}%): "
                         f"{'KEPT' if out.keep['channels_last'] else 'DROPPED'}")
    if "O2" in picked:
        o2 = picked["O2"]
        out.lines.append(f"compile: mode {o2.compile_mode!r}, p95 {o2.lat_p95_ms:.4f} ms "
                         f"({ref.lat_p95_ms / o2.lat_p95_ms:.2f}x the reference), compile time {float(o2.compile_s or 'nan'):.1f} s "
                         "(outside the latency figure)")
    return out


def allowed(rows, keep: dict):
    """The measured variants the seed's verdicts allow: FP32 only if FP16 was dropped, contiguous only
    if channels_last was dropped (a verdict not reached allows nothing beyond the default)."""
    import pandas as pd

    d = rows[pd.to_numeric(rows["lat_p95_ms"], errors="coerce").notna()]
    if not keep.get("fp16", False):
        d = d[d.precision == "fp32"]
    if not keep.get("channels_last", False):
        d = d[d.memory_format != "channels_last"]
    return d


def family_choice(rows, threshold: float, name: str):
    """F1/F2: the fastest row whose validation accuracy reaches `threshold`. Returns (row, met, line);
    when none does, the most accurate row on validation, with met=False (reported, never hidden)."""
    row, met = fastest_over(rows, threshold)
    if row is None:
        return None, False, f"{name}: nothing measured"
    if met:
        return row, True, f"{name} = {row['id']}: val {row.val_accuracy:.2f}% >= {threshold:.2f}%, p95 {row.lat_p95_ms:.4f} ms"
    return row, False, (f"{name} MISSED: the best validation accuracy is {row.val_accuracy:.2f}% ({row['id']}), "
                        f"under {threshold:.2f}%; kept as {name} and flagged")


def choose_light_model(light, candidates: list[str], bar: float):
    """J2's B1: among `candidates` (model names in `light`), the lowest p95 whose validation accuracy
    clears the bar; if none does, the most accurate (J4 then distils). Returns (row, reason)."""
    row, met = fastest_over(light[light.model.isin(candidates)], bar)
    if met:
        return row, f"validation accuracy {row.val_accuracy:.2f}% clears {bar}% with the lowest p95 ({row.lat_p95_ms:.4f} ms)"
    return row, f"no light model clears {bar}% on validation; kept the most accurate ({row.val_accuracy:.2f}%)"


def fastnet_curves(histories: dict, path=None):
    """FastNet training: summed-loss per image and validation accuracy per epoch, one colour per run."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, h) in enumerate(histories.items()):
        epochs = [r["epoch"] for r in h]
        ax_loss.plot(epochs, [r["train_loss"] for r in h], f"C{i}", label=name)
        ax_acc.plot(epochs, [r["val_acc"] for r in h], f"C{i}", label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss per image", title="training loss (augmented, smoothed labels)")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy (no mirror)")
    for ax in (ax_loss, ax_acc):
        integer_epochs(ax)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


# The latency-first family's rows of the final table: FastNet on PyTorch's fastest path, and the same
# networks in one megakernel launch.
FAMILY_ROWS = ("F1", "F2", "F1-mega", "F2-mega")


def family_status(final, bar: float, teacher_val: float, targets_ms: dict | None = None) -> list[str]:
    """One line per family row (F1, F2, F1-mega, F2-mega) of a final table: its accuracy bar (the seed's
    for F1, the teacher's validation accuracy in the same run for F2) and its p95 target, each met or not."""
    lines = []
    for rid in FAMILY_ROWS:
        r = final[final["id"] == rid]
        if r.empty:
            lines.append(f"{rid}: not in this table")
            continue
        r = r.iloc[0]
        threshold = bar if rid.startswith("F1") else teacher_val
        acc_ok = r.val_accuracy >= threshold
        line = (f"{rid}: val {r.val_accuracy:.2f}% vs {threshold:.2f}% ({'met' if acc_ok else 'MISSED'}), "
                f"test {r.accuracy:.2f}%, p95 {r.lat_p95_ms:.4f} ms")
        target = (targets_ms or {}).get(rid)
        if target is not None:
            line += f" vs target {target:.3f} ms ({'met' if r.lat_p95_ms <= target else 'MISSED'})"
        lines.append(line)
    return lines


def same_run_ratios(final, references: dict[str, str]):
    """Columns `x_vs_<ID>`: that reference row's p95 over each row's p95 (how many times faster), from
    the same run. References missing from the table give NaN."""
    out = final.copy()
    for ref in references:
        r = final[final["id"] == ref]
        out[f"x_vs_{ref}"] = (r.lat_p95_ms.iloc[0] / final.lat_p95_ms) if len(r) else np.nan
    return out


def export_choice(final, entries: dict, bar: float):
    """What J5 exports: the final candidate, the fastest variant whose validation accuracy clears the
    bar (None when nothing does)."""
    try:
        row = select_final(final, bar)
    except ValueError:
        return None
    return entries[row["id"]]


def aggregate_runs(df):
    """One row per id from repeated runs: latency columns averaged, p95 spread across runs added."""
    import pandas as pd

    from ..core.bench import numeric_columns

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

def seed_table(df, extra: dict[str, str] | None = None):
    """The sprint plan's table (ID, variant, accuracy, mean and p95 latency, size) as a DataFrame."""
    cols = {**SEED_COLUMNS, **(extra or {})}
    present = [c for c in cols if c in df.columns]
    return df[present].rename(columns={c: cols[c] for c in present})


def _block_pattern(tag: str):
    return re.compile(rf"(<!-- {tag}:start -->\n)(.*?)(<!-- {tag}:end -->)", re.S)


def readme_block(readme: str | Path, tag: str = "final-table") -> str | None:
    """The text between README's <!-- tag:start --> and <!-- tag:end --> markers; None without them."""
    readme = Path(readme)
    found = _block_pattern(tag).search(readme.read_text(encoding="utf-8")) if readme.is_file() else None
    return found.group(2) if found else None


def update_readme(readme: str | Path, table_md: str, tag: str = "final-table") -> bool:
    """Replace the text between <!-- tag:start --> and <!-- tag:end --> in README; False if no markers."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    pattern = _block_pattern(tag)
    if not pattern.search(text):
        return False
    atomic.write_text(readme, pattern.sub(lambda m: m.group(1) + table_md + m.group(3), text))
    return True


# ---------------------------------------------------------------- plots

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
    return save_figure(fig, path)


def pareto_frontier(latency, accuracy) -> list[int]:
    """Positions of the points no other point beats on both axes (lower latency, higher accuracy),
    ordered by latency: the staircase a faster-or-better choice walks along."""
    order = sorted(range(len(latency)), key=lambda i: (latency[i], -accuracy[i]))
    frontier, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            frontier.append(i)
            best = accuracy[i]
    return frontier


def _plain_ms(value, _pos=None) -> str:
    """Tick label of a log latency axis in plain milliseconds: 0.2, 0.5, 1, 2, 5, 10."""
    return f"{value:g}"


def log_ms_axis(ax, lo: float, hi: float) -> None:
    """A log x axis over [lo, hi] ms with plain labels (0.5, 1, 2) and at least three of them: 1-2-5 ticks,
    finer ones when the range is narrow (a smoke run's latencies may span less than a factor 2)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [float(f"{m * 10.0 ** e:.6g}") for e in decades for m in mantissas]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 3:
            break
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain_ms))
    ax.xaxis.set_minor_formatter(NullFormatter())


def smoke_note(df) -> str:
    """' (smoke profile: CPU timings, not GPU latency)' when the rows say they come from a smoke run."""
    if "profile" not in df or not (df["profile"] == "smoke").any():
        return ""
    cpu = "device_name" in df and df["device_name"].astype(str).str.startswith("cpu").any()
    return " (smoke profile: CPU timings, not GPU latency)" if cpu else " (smoke profile)"


def _place_labels(ax, xs, ys, texts, fontsize: float = 7) -> list:
    """Annotate each point with its text where the label covers no other label and no marker: try
    positions around the point at growing distances (a thin leader line when it ends up away)."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72
    points = ax.transData.transform(np.column_stack([xs, ys]))
    r = 4 * px_per_pt
    taken = [Bbox.from_extents(x - r, y - r, x + r, y + r) for x, y in points]
    area = ax.get_window_extent(renderer)
    directions = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    annotations = []
    for (x, y), text in sorted(zip(points, texts), key=lambda item: item[0][0]):
        probe = ax.text(0, 0, text, fontsize=fontsize)
        box = probe.get_window_extent(renderer)
        probe.remove()
        w, h = box.width, box.height
        chosen = None
        for step in range(1, 9):
            gap = r * step
            for dx, dy in directions:
                left = x + dx * gap - (w if dx < 0 else w / 2 if dx == 0 else 0)
                bottom = y + dy * gap - (h if dy < 0 else h / 2 if dy == 0 else 0)
                cand = Bbox.from_bounds(left, bottom, w, h)
                inside = area.x0 <= cand.x0 and cand.x1 <= area.x1 and area.y0 <= cand.y0 and cand.y1 <= area.y1
                clear = cand.padded(2 * px_per_pt)  # labels that touch read as one ("F2B2")
                if inside and not any(clear.overlaps(t) for t in taken):
                    chosen = (cand, step)
                    break
            if chosen:
                break
        if chosen is None:  # crowded beyond help: first position, it may overlap
            chosen = (Bbox.from_bounds(x + r, y + r, w, h), 1)
        cand, step = chosen
        taken.append(cand)
        offset = ((cand.x0 - x) / px_per_pt, (cand.y0 - y) / px_per_pt)
        arrow = {"arrowstyle": "-", "lw": 0.7, "color": "0.35", "shrinkA": 0, "shrinkB": 3} if step > 1 else None
        annotations.append(ax.annotate(text, ax.transData.inverted().transform((x, y)), xytext=offset,
                                       textcoords="offset points", fontsize=fontsize, ha="left", va="bottom",
                                       arrowprops=arrow))
    return annotations


def pareto_plot(df, bar: float, path=None, final_id: str | None = None, accuracy_column: str = "accuracy",
                floor_ms: float | None = None, latency_column: str = "lat_p95_ms", note: str | None = None):
    """Accuracy (`accuracy_column`) against p95 latency at batch 1 (log axis, plain ms labels).

    The Pareto frontier (no other variant is both faster and more accurate) is drawn as a staircase
    through its points; `floor_ms` marks the launch floor (J1) as a vertical line. `note` ends the title;
    by default it says so when the rows come from a smoke run (`smoke_note`). A bar far above every point
    (a smoke run's accuracies) is named in the legend without stretching the axis down to nothing."""
    import matplotlib.pyplot as plt
    import pandas as pd

    d = df.assign(_lat=pd.to_numeric(df[latency_column], errors="coerce"),
                  _acc=pd.to_numeric(df[accuracy_column], errors="coerce")).dropna(subset=["_lat", "_acc"])
    d = d[d._lat > 0].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_xscale("log")
    lats = list(d._lat) + ([floor_ms] if floor_ms else [])
    if lats:
        lo, hi = min(lats) / 1.6, max(lats) * 1.6
        ax.set_xlim(lo, hi)
        log_ms_axis(ax, lo, hi)
    accs = list(d._acc)
    spread = (max(accs) - min(accs)) if accs else 0.0
    bar_shown = not accs or min(accs) - max(spread, 5.0) <= bar <= max(accs) + max(spread, 5.0)
    accs += [bar] if bar_shown else []
    span = (max(accs) - min(accs) if accs else 0.0) or 1.0
    ax.set_ylim(min(accs, default=0) - 0.15 * span, max(accs, default=0) + 0.25 * span)
    ax.scatter(d._lat, d._acc, c="C0", zorder=3)
    frontier = pareto_frontier(list(d._lat), list(d._acc))
    if frontier:
        f = d.iloc[frontier]
        ax.plot(f._lat, f._acc, c="C1", lw=1.2, marker="o", mfc="none", ms=9, drawstyle="steps-post",
                label="Pareto frontier", zorder=2)
    if final_id is not None and (d["id"] == final_id).any():
        r = d[d["id"] == final_id].iloc[0]
        ax.scatter([r._lat], [r._acc], s=160, facecolors="none", edgecolors="C3", lw=2, label=f"final: {final_id}",
                   zorder=4)
    if bar_shown:
        ax.axhline(bar, c="C2", ls=":", label=f"bar {bar:g}%")
    else:
        ax.plot([], [], c="C2", ls=":", label=f"bar {bar:g}% (far above)")
    if floor_ms:
        ax.axvline(floor_ms, c="0.4", ls="--", lw=1, label=f"launch floor {floor_ms:.3g} ms")
        ax.annotate("launch floor", (floor_ms, 1), xycoords=("data", "axes fraction"), xytext=(3, -3),
                    textcoords="offset points", fontsize=7, color="0.3", ha="left", va="top", rotation=90)
    ax.set(xlabel=f"{latency_column.replace('_ms', '').replace('lat_', '')} latency at batch 1 (ms, log scale)",
           ylabel=f"{accuracy_column.replace('_', ' ')} (%)",
           title="Accuracy against latency" + (smoke_note(df) if note is None else note))
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    _place_labels(ax, list(d._lat), list(d._acc), [str(i) for i in d["id"]])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # outside: covers no point
    return save_figure(fig, path)


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
    log_ms_axis(ax, bins[0], bins[-1])
    ax.yaxis.get_major_locator().set_params(integer=True)  # calls are counted
    ax.set(xlabel="latency per call (ms, log scale; dotted: p95)", ylabel="calls", title="Batch-1 latency distributions")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def sweep_plot(df, bar: float, path=None, floor_ms: float | None = None, chosen: dict | None = None):
    """The FastNet sweep: test accuracy against p95 latency (log scale), each point without and with the
    mirror joined by a line, the launch floor and the bar marked, the chosen F1/F2 circled."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (point, d) in enumerate(df.groupby("point", sort=False)):
        d = d.sort_values("mirror")
        ax.plot(d.lat_p95_ms, d.accuracy, "-", c=f"C{i % 10}", lw=1, alpha=0.6)
        for _, r in d.iterrows():
            ax.scatter(r.lat_p95_ms, r.accuracy, c=f"C{i % 10}", marker="s" if r.mirror else "o",
                       label=point if not r.mirror else None)
    for key, c in (chosen or {}).items():
        r = df[df.id == c["id"]]
        if len(r):
            ax.scatter(r.lat_p95_ms, r.accuracy, s=220, facecolors="none", edgecolors="k", lw=1.5)
            ax.annotate(key, (r.lat_p95_ms.iloc[0], r.accuracy.iloc[0]), xytext=(8, -12),
                        textcoords="offset points", fontsize=9, weight="bold")
    ax.axhline(bar, c="C2", ls=":", lw=1)
    ax.annotate(f"bar {bar:g}%", (0.01, bar), xycoords=("axes fraction", "data"), xytext=(0, 3),
                textcoords="offset points", fontsize=8, color="C2")
    lo = df.lat_p95_ms.min()
    if floor_ms is not None and np.isfinite(floor_ms):
        ax.axvline(floor_ms, c="0.4", ls="--", lw=1)
        ax.annotate(f"launch floor\n{floor_ms * 1000:.0f} us", (floor_ms, 0.03), xycoords=("data", "axes fraction"),
                    xytext=(4, 0), textcoords="offset points", fontsize=8, color="0.3")
        lo = min(lo, floor_ms)
    ax.set_xscale("log")
    ax.set_xlim(lo * 0.8, df.lat_p95_ms.max() * 1.25)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 1000:g}"))
    ax.set(xlabel="p95 latency at batch 1 (us, log scale)", ylabel="test accuracy (%)",
           title="FastNet sweep (circles: image only; squares: image + mirror)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="major", alpha=0.3)
    return save_figure(fig, path)

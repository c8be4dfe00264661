"""fastcifar.series.report (decision rules, final selection, aggregation, README update, plots) and the markdown
tables and training curves it shares with the toolkit (fastcifar.core.tables, fastcifar.core.plots)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from fastcifar.core import plots, tables  # noqa: E402
from fastcifar.series import report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------- decision rules


def test_keep_fp16():
    assert report.keep_fp16(92.0, 91.6) is True  # drop 0.4
    assert report.keep_fp16(92.0, 91.4) is False  # drop 0.6
    assert report.keep_fp16(92.0, 92.3) is True  # a gain is kept
    assert report.keep_fp16(92.0, 91.4, max_drop=1.0) is True


def test_keep_channels_last():
    assert report.keep_channels_last(1.00, 0.90) is True  # 10% faster
    assert report.keep_channels_last(1.00, 0.94) is True  # 6%
    assert report.keep_channels_last(1.00, 0.96) is False  # 4%
    assert report.keep_channels_last(1.00, 1.10) is False  # slower
    assert report.keep_channels_last(2.00, 1.80, min_gain=0.2) is False


def candidates() -> pd.DataFrame:
    return pd.DataFrame([
        {"id": "slow-best", "accuracy": 95.0, "val_accuracy": 94.8, "lat_p95_ms": 3.0},
        # best test accuracy of the fast ones, but its validation accuracy is under the bar
        {"id": "test-lucky", "accuracy": 93.5, "val_accuracy": 92.5, "lat_p95_ms": 0.8},
        {"id": "fast-ok", "accuracy": 92.9, "val_accuracy": 93.1, "lat_p95_ms": 1.2},
        {"id": "faster-no-lat", "accuracy": 94.0, "val_accuracy": 94.0, "lat_p95_ms": np.nan},
        {"id": "mid", "accuracy": 93.2, "val_accuracy": 93.0, "lat_p95_ms": 1.5},
    ])


def test_select_final_uses_validation_accuracy_only():
    df = candidates()
    chosen = report.select_final(df, bar=93.0)
    assert isinstance(chosen, pd.Series)
    assert chosen["id"] == "fast-ok"
    # judged on test accuracy, the fastest row clearing the bar would have been another one
    test_choice = report.select_final(df, bar=93.0, accuracy_column="accuracy")
    assert test_choice["id"] == "test-lucky" != chosen["id"]


def test_select_final_bar_is_inclusive_and_skips_missing_latency():
    assert report.select_final(candidates(), bar=93.1)["id"] == "fast-ok"
    assert report.select_final(candidates(), bar=93.2)["id"] == "slow-best"  # 'faster-no-lat' has no latency


def test_select_final_accepts_strings_from_csv():
    df = candidates().astype(str)
    assert report.select_final(df, bar=93.0)["id"] == "fast-ok"


def test_select_final_raises_when_nothing_clears():
    with pytest.raises(ValueError) as info:
        report.select_final(candidates(), bar=96.0)
    assert "96" in str(info.value) and "94.80" in str(info.value)


# ---------------------------------------------------------------- aggregate_runs


def test_aggregate_runs():
    df = pd.DataFrame([
        {"id": "b", "variant": "fp16", "lat_mean_ms": 1.0, "lat_p95_ms": 2.0, "gpu_p95_ms": 1.0, "accuracy": 90.0, "run": 1},
        {"id": "a", "variant": "fp32", "lat_mean_ms": 3.0, "lat_p95_ms": 4.0, "gpu_p95_ms": 3.0, "accuracy": 91.0, "run": 1},
        {"id": "b", "variant": "fp16", "lat_mean_ms": 2.0, "lat_p95_ms": 2.2, "gpu_p95_ms": 2.0, "accuracy": 90.0, "run": 2},
        {"id": "b", "variant": "fp16", "lat_mean_ms": 3.0, "lat_p95_ms": 2.4, "gpu_p95_ms": 3.0, "accuracy": 90.0, "run": 3},
    ])
    out = report.aggregate_runs(df)
    assert out["id"].tolist() == ["b", "a"]  # order of first appearance
    b = out.iloc[0]
    assert b["lat_mean_ms"] == pytest.approx(2.0)
    assert b["lat_p95_ms"] == pytest.approx(2.2)
    assert b["gpu_p95_ms"] == pytest.approx(2.0)
    assert b["p95_spread_pct"] == pytest.approx(20.0)
    assert b["runs"] == 3 and np.isnan(b["run"])
    assert b["variant"] == "fp16" and b["accuracy"] == 90.0
    a = out.iloc[1]
    assert a["lat_p95_ms"] == pytest.approx(4.0) and a["p95_spread_pct"] == 0.0 and a["runs"] == 1
    assert len(df) == 4  # input untouched


def test_aggregate_runs_numeric_strings():
    df = pd.DataFrame({"id": ["x", "x"], "lat_p95_ms": ["1.0", "1.5"], "lat_mean_ms": ["1", ""], "run": [1, 2]})
    out = report.aggregate_runs(df)
    assert out.loc[0, "lat_p95_ms"] == pytest.approx(1.25)
    assert out.loc[0, "lat_mean_ms"] == pytest.approx(1.0)  # blanks ignored
    assert out.loc[0, "p95_spread_pct"] == pytest.approx(50.0)


# ---------------------------------------------------------------- markdown_table


def test_markdown_table_format():
    df = pd.DataFrame({
        "id": ["J4-01", "J4|02"],
        "accuracy": [91.23456, np.nan],
        "lat_p95_ms": [0.123456, 1.0],
        "params": [1234, 56],
        "cuda_graph": [True, False],
        "notes": ["", "fused"],
    })
    md = tables.markdown_table(df, {"id": "ID", "accuracy": "Acc (%)", "lat_p95_ms": "p95 (ms)", "params": "Params",
                                    "cuda_graph": "Graph", "notes": "Notes"})
    lines = md.splitlines()
    assert md.endswith("\n")
    assert lines[0] == "| ID | Acc (%) | p95 (ms) | Params | Graph | Notes |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| J4-01 | 91.23 | 0.1235 | 1234 | yes |  |"
    assert lines[3] == "| J4\\|02 |  | 1.0000 | 56 |  | fused |"
    assert len(lines) == 4


def test_markdown_table_defaults_and_digits():
    df = pd.DataFrame({"id": ["a"], "val_accuracy": [93.456], "size_mb": [2.5], "variant": ["x"]})
    md = tables.markdown_table(df, digits={"size_mb": 1})
    assert md.splitlines() == ["| id | val_accuracy | size_mb | variant |", "|---|---|---|---|",
                               "| a | 93.46 | 2.5 | x |"]


def test_markdown_table_subset_of_columns_and_missing_column():
    df = pd.DataFrame({"id": ["a", "b"], "lat_p95_ms": [1.0, 2.0]})
    md = tables.markdown_table(df, {"lat_p95_ms": "p95", "size_mb": "Size"})
    assert md.splitlines() == ["| p95 | Size |", "|---|---|", "| 1.0000 |  |", "| 2.0000 |  |"]


def test_markdown_table_integers_in_all_numeric_frame():
    df = pd.DataFrame({"params": [1234], "lat_p95_ms": [0.5]})
    assert tables.markdown_table(df).splitlines()[2] == "| 1234 | 0.5000 |"


def test_seed_table():
    df = pd.DataFrame({"id": ["a"], "variant": ["v"], "accuracy": [90.0], "lat_p95_ms": [1.0], "params": [3]})
    t = report.seed_table(df)
    assert list(t.columns) == ["ID", "Variant", "Test acc. (%)", "p95 lat. (ms)"]
    t = report.seed_table(df, extra={"params": "Params"})
    assert list(t.columns)[-1] == "Params"


# ---------------------------------------------------------------- update_readme


def test_update_readme_replaces_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n<!-- final-table:start -->\nold table\nmore old\n"
                      "<!-- final-table:end -->\n\nafter\n", encoding="utf-8")
    table = "| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert report.update_readme(readme, table) is True
    assert readme.read_text() == ("# Title\n\nintro\n<!-- final-table:start -->\n" + table +
                                  "<!-- final-table:end -->\n\nafter\n")
    assert report.update_readme(readme, "new\n") is True  # idempotent markers, replaced again
    text = readme.read_text()
    assert "new\n<!-- final-table:end -->" in text and "| 1 | 2 |" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]


def test_update_readme_table_with_backslashes(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- final-table:start -->\nx\n<!-- final-table:end -->\n")
    table = "| a\\|b | \\1 |\n"
    assert report.update_readme(readme, table)
    assert table in readme.read_text()


def test_update_readme_other_tag(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- final-table:start -->\nA\n<!-- final-table:end -->\n"
                      "<!-- protocol:start -->\nB\n<!-- protocol:end -->\n")
    assert report.update_readme(readme, "C\n", tag="protocol")
    assert readme.read_text() == ("<!-- final-table:start -->\nA\n<!-- final-table:end -->\n"
                                  "<!-- protocol:start -->\nC\n<!-- protocol:end -->\n")


def test_update_readme_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    original = "# Title\nno markers here\n<!-- final-table:start -->\n"
    readme.write_text(original)
    assert report.update_readme(readme, "| x |\n") is False
    assert readme.read_text() == original


# ---------------------------------------------------------------- plots


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_pareto_plot_writes_png(tmp_path):
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "accuracy": [90.0, 92.0, 91.0, np.nan],
                       "lat_p95_ms": [0.5, 1.5, 2.0, 1.0]})
    path = tmp_path / "figs" / "pareto.png"
    fig = report.pareto_plot(df, bar=91.0, path=path, final_id="b")
    assert_png(path)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = ax.get_legend_handles_labels()[1]
    assert "Pareto frontier" in labels and "final: b" in labels and "bar 91%" in labels
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["a", "b", "c"]  # 'd' has no accuracy


def test_pareto_plot_without_path_and_unknown_final():
    df = pd.DataFrame({"id": ["a"], "val_accuracy": [90.0], "lat_p95_ms": [0.5]})
    fig = report.pareto_plot(df, bar=91.0, final_id="zzz", accuracy_column="val_accuracy")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert not any(label.startswith("final") for label in labels)


def test_latency_histograms_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    samples = {"fp32": rng.lognormal(0, 0.2, 200), "fp16": rng.lognormal(-0.5, 0.2, 200)}
    path = tmp_path / "hist.png"
    fig = report.latency_histograms(samples, path)
    assert_png(path)
    assert fig.axes[0].get_legend_handles_labels()[1] == ["fp32", "fp16"]


def test_training_curves_writes_png(tmp_path):
    def history(n):
        e = np.arange(1, n + 1)
        return pd.DataFrame({"epoch": e, "train_loss": 2 / e, "val_loss": 2.2 / e, "train_acc": 50 + 4 * e,
                             "val_acc": 48 + 4 * e})

    path = tmp_path / "curves.png"
    fig = plots.training_curves({"resnet": history(5), "small": history(3)}, path)
    assert_png(path)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4 and len(fig.axes[1].lines) == 4


def test_image_grid_writes_png(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(11) % 10
    classes = [f"class{i}" for i in range(10)]
    path = tmp_path / "grid.png"
    fig = report.image_grid(images, labels, classes, path, per_row=4, title="samples")
    assert_png(path)
    assert len(fig.axes) == 12  # 3 rows of 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:11] == [classes[i] for i in labels] and titles[11] == ""


def crowded() -> pd.DataFrame:
    """Seven variants, three of them within a few percent of each other on both axes."""
    return pd.DataFrame({
        "id": ["B1", "B2", "O1", "O2", "O4", "D1", "D1-fast"],
        "accuracy": [86.24, 92.10, 86.26, 86.25, 92.10, 86.20, 86.23],
        "val_accuracy": [86.6, 93.0, 86.6, 86.6, 93.0, 87.2, 87.2],
        "lat_p95_ms": [5.13, 2.97, 5.42, 0.64, 0.257, 5.89, 0.327],
    })


def test_pareto_frontier_positions():
    lat, acc = [3.0, 1.0, 2.0, 0.5, 4.0], [95.0, 92.0, 93.0, 90.0, 94.0]
    assert report.pareto_frontier(lat, acc) == [3, 1, 2, 0]  # 4 is slower and worse than 0


def test_pareto_plot_draws_the_frontier_it_names():
    fig = report.pareto_plot(crowded(), bar=85.0)
    ax = fig.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    line = handles[labels.index("Pareto frontier")]
    assert list(line.get_xdata()) == [0.257]  # O4 is both the fastest and the most accurate here
    df = crowded().assign(accuracy=[86.24, 92.10, 86.26, 86.25, 86.0, 86.20, 86.23])
    line = next(h for h, lab in zip(*report.pareto_plot(df, bar=85.0).axes[0].get_legend_handles_labels())
                if lab == "Pareto frontier")
    assert list(line.get_xdata()) == [0.257, 0.327, 0.64, 2.97] and line.get_drawstyle() == "steps-post"


def test_pareto_plot_point_labels_do_not_collide():
    fig = report.pareto_plot(crowded(), bar=85.0, final_id="O4")
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    assert set(boxes) == set(crowded().id)
    names = sorted(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not boxes[a].overlaps(boxes[b]), (a, b)
    points = ax.transData.transform(crowded()[["lat_p95_ms", "accuracy"]].to_numpy())
    for name, box in boxes.items():
        for x, y in points:
            assert not box.contains(x, y), name  # no label sits on a marker


def test_pareto_plot_log_axis_has_plain_ms_labels_that_do_not_overlap():
    fig = report.pareto_plot(crowded(), bar=85.0)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    major = [t for t in ax.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in major] == ["0.2", "0.5", "1", "2", "5"]
    assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
    boxes = [t.get_window_extent(renderer) for t in major]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_pareto_plot_marks_the_launch_floor_and_uses_the_accuracy_column():
    fig = report.pareto_plot(crowded(), bar=85.0, floor_ms=0.0123, accuracy_column="val_accuracy")
    ax = fig.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    floor = handles[labels.index("launch floor 0.0123 ms")]
    assert list(floor.get_xdata()) == [0.0123, 0.0123]
    assert ax.get_xlim()[0] < 0.0123 and "val accuracy" in ax.get_ylabel()
    b2 = next(t for t in ax.texts if t.get_text() == "B2")
    assert b2.xy[1] == pytest.approx(93.0)  # plotted at its validation accuracy
    without = report.pareto_plot(crowded(), bar=85.0).axes[0].get_legend_handles_labels()[1]
    assert not any(label.startswith("launch floor") for label in without)


# ---------------------------------------------------------------- what the figures say

def test_training_curves_name_the_smoothing_they_had_and_mark_whole_epochs():
    def history(n, smoothing=None):
        e = np.arange(1, n + 1)
        h = pd.DataFrame({"epoch": e, "train_loss": 2 / e, "val_loss": 2.2 / e, "train_acc": 50 + 4 * e,
                          "val_acc": 48 + 4 * e})
        if smoothing is not None:
            h.attrs["label_smoothing"] = smoothing  # as engine.fit records it
        return h

    plain = plots.training_curves({"run": history(2, 0.0)})
    ax_loss, ax_acc = plain.axes
    assert "smoothing" not in ax_loss.get_title()
    assert ax_loss.get_legend() is not None and ax_acc.get_legend() is not None
    plain.canvas.draw()
    for ax in (ax_loss, ax_acc):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # no epoch 1.25
    assert "label smoothing 0.1" in plots.training_curves({"run": history(3, 0.1)}).axes[0].get_title()
    assert "label smoothing 0.2" in plots.training_curves({"run": history(3)}, label_smoothing=0.2).axes[0].get_title()


def smoke_rows() -> pd.DataFrame:
    """A smoke run's final table: CPU timings close together, accuracies near chance, far below the bar."""
    ids = ["B1", "B2", "O1", "O2", "O3", "O4", "D1", "F1", "F2", "F1-mega", "F2-mega"]
    return pd.DataFrame({"id": ids, "accuracy": [10.5, 10.2, 11.0, 9.4, 9.8, 10.2, 9.4, 9.4, 10.2, 10.2, 9.4],
                         "lat_p95_ms": [7.4, 5.0, 9.9, 5.0, 6.5, 5.1, 6.0, 4.1, 4.6, 9.6, 4.8],
                         "profile": "smoke", "device_name": "cpu (x86_64, 2 threads)"})


def test_a_smoke_pareto_plot_says_so_and_its_labels_stay_apart():
    fig = report.pareto_plot(smoke_rows(), bar=85.0)
    ax = fig.axes[0]
    assert "smoke profile: CPU timings, not GPU latency" in ax.get_title()
    assert ax.get_ylim()[1] < 20  # the points are spread over the axis, not pressed under a bar at 85%
    assert "bar 85% (far above)" in ax.get_legend_handles_labels()[1]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts if t.get_text() in set(smoke_rows().id)}
    assert len(boxes) == 11
    names = sorted(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not boxes[a].padded(1).overlaps(boxes[b]), (a, b)  # apart, not merely touching ("F2B2")
    assert "smoke" not in report.pareto_plot(crowded(), bar=85.0).axes[0].get_title()


def test_a_narrow_latency_histogram_has_readable_ticks():
    rng = np.random.default_rng(0)
    fig = report.latency_histograms({f"run {k}": rng.uniform(0.8, 1.4, 20) for k in (1, 2, 3)})
    ax = fig.axes[0]
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert len(shown) >= 3 and all("^" not in t and "times" not in t for t in shown), shown  # plain ms, not 10^x
    counts = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    assert all(float(t).is_integer() for t in counts), counts  # calls are whole


def test_every_epoch_axis_has_whole_epochs(monkeypatch):
    from fastcifar.toolkit import grid_search

    def whole(ax):
        ax.figure.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        return ticks and all(float(t).is_integer() for t in ticks)

    runs = {"F1": [{"epoch": 1, "train_loss": 1.0, "val_acc": 50.0}, {"epoch": 2, "train_loss": 0.8, "val_acc": 60.0}]}
    fig = report.fastnet_curves(runs)
    assert all(whole(ax) for ax in fig.axes) and fig.axes[0].get_legend() is not None
    results = pd.DataFrame({"point": [1, 2], "lr": [0.001, 0.002], "weight_decay": [1e-4, 1e-4],
                            "blocks": ["[1, 1, 1]"] * 2, "widths": ["[4, 8, 16]"] * 2,
                            "best_val_acc": [50.0, 55.0], "final_val_loss": [1.0, 0.9]})
    history = pd.DataFrame({"epoch": [1, 2], "val_acc": [40.0, 50.0]})
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig))  # grid_figure closes its figure
    grid_search.grid_figure(results, {1: history, 2: history}, None, "grid")
    assert whole(drawn[0].axes[1])

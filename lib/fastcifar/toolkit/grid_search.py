"""Mini grid search (CIFAR-100 report, section 5).

    python -m fastcifar.grid_search --config FILE [overrides]

Trains one model per point of grid_lr x grid_weight_decay x grid_blocks x grid_widths for grid_epochs
epochs each, with everything else from the config, through the same `engine.fit`. The best point is the
one with the highest VALIDATION accuracy (ties: the lower final validation loss); the test set is never
looked at. Writes grid_results.csv (one row per point, rewritten after each point so a killed search
keeps what it finished), grid_results.md, best_config.yaml (the config with the best point's values,
ready for `train`), grid_search.png, and each point's epoch log under points/.
"""
from __future__ import annotations

import itertools
import sys
import time

from tqdm import tqdm

from . import commands, config as configs
from ..core import atomic, engine, models, plots, tables


def check_grid(config: dict) -> None:
    """A model that takes no blocks and widths (configs.model_arch gives it none) would train the same
    network at points that differ in them alone."""
    varied = [k for k in ("grid_blocks", "grid_widths") if len(config[k]) > 1]
    if varied and not configs.model_arch(config):
        raise configs.ConfigError(
            f"{' and '.join(varied)} vary resnet_custom only, and model is {config['model']}; expected one entry "
            f"each (e.g. grid_blocks=[[3,3,3]] grid_widths=[[64,128,256]]) or model=resnet_custom")


def grid_points(config: dict) -> list[dict]:
    """Every combination, in a fixed order (lr varies slowest)."""
    return [{"lr": lr, "weight_decay": wd, "blocks": list(blocks), "widths": list(widths)}
            for lr, wd, blocks, widths in itertools.product(config["grid_lr"], config["grid_weight_decay"],
                                                            config["grid_blocks"], config["grid_widths"])]


def rank(results):
    """Results sorted best first: validation accuracy, then the lower final validation loss."""
    return results.sort_values(["best_val_acc", "final_val_loss"], ascending=[False, True], kind="stable")


def point_label(row) -> str:
    return f"lr {row['lr']:g}, wd {row['weight_decay']:g}, blocks {row['blocks']}, widths {row['widths']}"


def grid_figure(results, histories: dict, path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = rank(results)
    fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(13, max(3.5, 0.32 * len(results) + 1.5)),
                                           gridspec_kw={"width_ratios": [1.2, 1]})
    labels = [point_label(r) for _, r in ranked.iterrows()][::-1]
    values = ranked.best_val_acc.to_numpy()[::-1]
    colours = ["C0"] * (len(values) - 1) + ["C2"]
    ax_bar.barh(range(len(values)), values, color=colours)
    ax_bar.set_yticks(range(len(values)), labels, fontsize=7)
    ax_bar.set(xlabel="best validation accuracy (%)", title="grid points (best in green)")
    for i, v in enumerate(values):
        ax_bar.text(v, i, f" {v:.2f}", va="center", fontsize=7)
    best_point = int(ranked.iloc[0].point)
    for point, history in histories.items():
        is_best = point == best_point
        ax_curve.plot(history.epoch, history.val_acc, "o-", ms=3, color="C2" if is_best else "0.6", lw=2 if is_best else 0.8,
                      zorder=3 if is_best else 1, label="best point" if is_best else None)
    ax_curve.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy per epoch")
    plots.integer_epochs(ax_curve)
    ax_curve.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plots.save_figure(fig, path)
    plt.close(fig)


def search_grid(config: dict, run, device, checkpoint=None) -> None:
    import pandas as pd

    check_grid(config)
    splits = commands.load_splits(config, run)
    points = grid_points(config)
    print(f"grid_search: {len(points)} points x {config['grid_epochs']} epochs", flush=True)
    rows, histories = [], {}
    bar = tqdm(points, desc="grid", disable=None if config["progress"] else True, file=sys.stdout)
    for i, values in enumerate(bar, start=1):
        point_config = {**config, **values, "max_epochs": config["grid_epochs"]}
        model = commands.build_model(point_config)
        params = models.count_params(model)
        name = f"point{i:02d}"
        t0 = time.perf_counter()
        result = engine.fit(model, splits, configs.train_config(point_config), name, config["model"],
                           run.file("points"), device, resume=False, progress=False,
                           tensorboard_dir=run.file("tensorboard") / name if config["tensorboard"] else None)
        for weights in (result.best_path, result.last_path):  # a search keeps numbers, not weights
            weights.unlink(missing_ok=True)
        history = result.history
        histories[i] = history
        best = history.loc[history.val_acc.idxmax()]
        last = history.iloc[-1]
        rows.append({"point": i, **values, "blocks": str(values["blocks"]), "widths": str(values["widths"]),
                     "params": params, "best_val_acc": result.best_val_acc, "best_epoch": int(best.epoch),
                     "final_val_acc": last.val_acc, "final_val_loss": last.val_loss, "final_train_acc": last.train_acc,
                     "final_train_loss": last.train_loss, "seconds": time.perf_counter() - t0,
                     "images_per_s": result.images_per_s})
        with atomic.atomic_path(run.file("grid_results.csv")) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        bar.write(f"  point {i}/{len(points)}: {point_label(rows[-1])}: best val {result.best_val_acc:.2f}% "
                  f"({rows[-1]['seconds']:.1f} s)")
        bar.set_postfix(best=f"{max(r['best_val_acc'] for r in rows):.2f}")
    bar.close()

    results = pd.DataFrame(rows)
    ranked = rank(results)
    best_row = ranked.iloc[0]
    best_values = points[int(best_row.point) - 1]
    best_config = {**config, **best_values}
    atomic.write_text(run.file("best_config.yaml"), configs.to_yaml(
        best_config, f"Best point of grid search {run.path.name} (by validation accuracy): {point_label(best_row)}.\n"
                     f"Train with it: python -m fastcifar.train --config {run.file('best_config.yaml')}"))
    columns = {"point": "point", "lr": "lr", "weight_decay": "weight decay", "blocks": "blocks", "widths": "widths",
               "params": "parameters", "best_val_acc": "best val acc (%)", "best_epoch": "best epoch",
               "final_val_loss": "final val loss", "final_train_acc": "final train acc (%)", "seconds": "seconds"}
    shown = ranked.assign(lr=ranked.lr.map("{:g}".format), weight_decay=ranked.weight_decay.map("{:g}".format))
    table = tables.markdown_table(shown, columns, digits={"seconds": 1})
    atomic.write_text(run.file("grid_results.md"), (
        f"# Grid search: {config['model']} on {config['dataset']}, {config['grid_epochs']} epoch(s) per point\n\n"
        f"Best first, chosen on validation accuracy ({len(splits.val)} images; the test set is not used). "
        f"Optimizer {config['optimizer']}, batch {config['batch_size']}, schedule {config['schedule']}, "
        f"seed {config['seed']}; data {splits.source}.\n\n{table}\n"
        f"Best: {point_label(best_row)} -> best_config.yaml\n"))
    grid_figure(results, histories, run.file("grid_search.png"),
                f"grid search: {config['model']} on {config['dataset']}, {config['grid_epochs']} epoch(s) per point")
    summary = {"best": {**best_values, "best_val_acc": float(best_row.best_val_acc)}, "points": len(points),
               "best_config": str(run.file("best_config.yaml"))}
    run.update(result=summary)
    print(f"grid_search: best {point_label(best_row)}: validation accuracy {best_row.best_val_acc:.2f}%", flush=True)
    print(f"next: python -m fastcifar.train --config {run.file('best_config.yaml')}", flush=True)


def main(argv: list[str] | None = None) -> int:
    return commands.run_command("grid_search", "Mini grid search over lr x weight decay x blocks x widths; best "
                                "point on validation accuracy.", search_grid, argv)


if __name__ == "__main__":
    sys.exit(main())

"""J2, the speed baselines: a light model from scratch (row B1) and the FastNet points the sweep chose.
One function per step of notebooks/J2_light_models.ipynb, in its order.

Reads the sweep's record (records.SweepRecord); starts the series' results.csv (the B1 row and the light
models' rows), writes b1.json (records.LightChoice) and fastnet.json (records.FastNetPoints) for J4, the
checkpoints, and the figures j2_*.png.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from . import records, recipe, report, sweep
from .session import Session
from ..core import bench, engine, models, optimize, sanity

OVERFIT_IMAGES = 64
OVERFIT_LR = 0.05  # J2's memorisation check: SGD momentum 0.9 at this rate, for the profile's sanity_steps


def sweep_choice(s: Session, sweep_record: str | None) -> dict[str, records.FastNetPoint]:
    """The sweep's F1/F2 choice: from `sweep_record` when given, else where the sweep writes it, else the
    committed record (sweep.record_path); says which file it read and what data this run trains on."""
    path = sweep.record_path(sweep_record, s.run.root)
    chosen = sweep.chosen_points(path)
    print(f"FastNet points chosen by the sweep: {s.run.relative(path)}")
    print(f"train {len(s.splits.train)}, val {len(s.splits.val)}, test {len(s.splits.test)} images; {s.splits.source}")
    return chosen


@dataclass
class SanityReport:
    baselines: object  # DataFrame: majority class and uniform random accuracy (%), val and test
    checks: object     # DataFrame: one row per model, initial loss and the loss after memorising 64 images
    problems: list[str]


def sanity_checks(s: Session, light_models: list[str], chosen: dict, train_points: list[str], seed: int) -> SanityReport:
    """sanity.run_checks (the CIFAR-100 report's checks) on each untrained model J2 trains: trivial baselines,
    the initial loss against ln(classes), 64 training images memorised. The verdicts are
    engine.sanity_failures'; memorisation is judged only in the full profile (the smoke one runs too few
    steps)."""
    import pandas as pd

    nets = [(name, name, {}) for name in light_models]
    nets += [(f"fastnet {key}", "fastnet", chosen[key].arch) for key in train_points]
    baselines, rows = None, []
    for label, name, arch in nets:
        torch.manual_seed(seed)
        result = sanity.run_checks(models.build_model(name, len(s.splits.classes), **arch), s.splits, s.device, seed,
                                   overfit_images=OVERFIT_IMAGES, overfit_steps=s.run.profile.sanity_steps,
                                   overfit_lr=OVERFIT_LR)
        baselines = result["baselines_pct"]
        rows.append({"model": label, "initial loss": result["initial_loss"]["observed"],
                     f"ln({len(s.splits.classes)})": result["initial_loss"]["expected_ln_classes"],
                     f"loss after overfitting {OVERFIT_IMAGES} images": result["overfit"]["final_loss"]})
    problems = engine.sanity_failures(rows, len(s.splits.classes), overfit=not s.run.profile.is_smoke)
    return SanityReport(pd.DataFrame(baselines).round(2), pd.DataFrame(rows).round(4), problems)


def train_light_models(s: Session, light_models: list[str], stem_ablation: bool, seed: int, *, epochs: int,
                       batch_size: int, lr: float, label_smoothing: float, channels_last: bool) -> dict:
    """Each light model (and, with `stem_ablation`, its ImageNet-stem version) trained from scratch by
    core.engine.fit with one recipe: SGD Nesterov, warm-up then cosine, bf16 autocast on the GPU.
    Returns {name: engine.TrainResult}."""
    cfg = engine.TrainConfig(epochs=s.run.profile.epochs(epochs), batch_size=batch_size, lr=lr,
                             label_smoothing=label_smoothing, seed=seed,
                             channels_last=channels_last and s.device.type == "cuda")
    names = light_models + ([f"{n}_imagenet_stem" for n in light_models] if stem_ablation else [])
    trained = {}
    for name in names:
        torch.manual_seed(seed)
        trained[name] = engine.fit(models.build_model(name), s.splits, cfg, name, name, s.run.ckpt_dir, s.device,
                                   resume=False)
    return trained


def training_table(trained: dict):
    import pandas as pd

    return pd.DataFrame([{"model": n, "best val acc (%)": r.best_val_acc, "wall time (s)": r.train_s,
                          "images/s": r.images_per_s, "final train-val gap (pts)": r.history.gap.iloc[-1]}
                         for n, r in trained.items()]).round(2)


def measure_light_models(s: Session, trained: dict):
    """Each best checkpoint (by validation accuracy) timed with the J1 benchmark in FP32, eager, and
    evaluated on validation and test. Returns the rows."""
    import pandas as pd

    rows = []
    for name, res in trained.items():
        model, _ = engine.load_model(res.best_path, s.device)
        df, _ = optimize.measure_specs(model, name, {f"J2-{name}": optimize.Spec()}, s.val, s.test, s.warmup, s.iters, s.meta)
        rows.append(df.assign(train_s=res.train_s, images_per_s=res.images_per_s))
    return pd.concat(rows, ignore_index=True)


def keep_b1(s: Session, light, trained: dict, light_models: list[str], bar: float) -> records.LightChoice:
    """B1 by report.choose_light_model (the fastest light model over the bar on validation, else the most
    accurate). Its row, renamed B1, and the others start results.csv afresh; b1.json says which for J4."""
    kept, why = report.choose_light_model(light, light_models, bar)
    print(f"B1 = {kept.model}: {why}")
    rows = light.copy()
    rows.loc[rows.model == kept.model, "id"] = "B1"
    # J2 starts the series' table: no row of an earlier run survives
    bench.write_results(s.run.results_csv, rows.to_dict("records"), replace="file")
    choice = records.LightChoice(model=kept.model, checkpoint=s.run.relative(trained[kept.model].best_path),
                                 reason=why)
    records.write(choice, s.output(records.LightChoice.FILE))
    return choice


def stem_ablation_table(light, light_models: list[str], stem_ablation: bool):
    """What the CIFAR stem buys: validation accuracy and FP32 p95 of each light model beside its ImageNet-stem
    version (None unless `stem_ablation` trained both)."""
    import pandas as pd

    if not stem_ablation:
        return None
    pairs = []
    for name in light_models:
        a, b = light[light.model == name].iloc[0], light[light.model == f"{name}_imagenet_stem"].iloc[0]
        pairs.append({"model": name, "val acc CIFAR stem": a.val_accuracy, "val acc ImageNet stem": b.val_accuracy,
                      "gain (pts)": a.val_accuracy - b.val_accuracy, "p95 CIFAR stem (ms)": a.lat_p95_ms,
                      "p95 ImageNet stem (ms)": b.lat_p95_ms, "latency cost (x)": a.lat_p95_ms / b.lat_p95_ms})
    return pd.DataFrame(pairs).round(3)


def describe_points(chosen: dict[str, records.FastNetPoint]) -> str:
    """One line per chosen point: architecture, parameters, recipe, mirror (the same on every machine)."""
    lines = []
    for key, c in chosen.items():
        m = models.build_model("fastnet", **c.arch)
        lines.append(f"{key}: point {c.point}, {models.label('fastnet', m.arch)}, {models.count_params(m):,} "
                     f"parameters, recipe {c.recipe!r}, mirror {c.mirror}")
    return "\n".join(lines)


@dataclass
class TrainedPoints:
    points: dict[str, records.FastNetPoint]        # every chosen point; those trained here carry a checkpoint
    histories: dict[str, list] = field(default_factory=dict)  # per trained point, the recipe's epochs

    def table(self):
        import pandas as pd

        return pd.DataFrame([{"point": k, "widths": p.arch["widths"], "convs": p.arch["convs"], "epochs": p.epochs,
                              "train (s)": p.train_s, "val acc (%)": p.val_acc, "val acc with mirror (%)": p.val_acc_mirror}
                             for k, p in self.points.items() if p.trained]).round(2)


def train_fastnet_points(s: Session, chosen: dict[str, records.FastNetPoint], train_points: list[str]) -> TrainedPoints:
    """Each point of `train_points` trained again with its recipe (series.recipe; the profile may cut it
    short) and saved as fastnet_<key>.pth; the others pass on untouched (F2's architecture is distilled in J4)."""
    points, histories = dict(chosen), {}
    for key in train_points:
        c = chosen[key]
        r = recipe.for_profile(recipe.point_recipe(c.recipe, c.epochs), s.run.profile)
        path = s.run.ckpt_dir / f"fastnet_{key}.pth"
        res = recipe.train_and_save(s.splits, c.arch, r, s.device, path, name=f"fastnet_{key}")
        points[key] = dataclasses.replace(c, checkpoint=s.run.relative(path), train_s=res.train_s, epochs=r.epochs,
                                          val_acc=res.val_acc, val_acc_mirror=res.val_acc_mirror)
        histories[key] = res.history
    return TrainedPoints(points, histories)


def measure_fastnet_points(s: Session, trained: TrainedPoints):
    """Each trained point measured like the light models (FP32, eager; the mirror in the call when the sweep
    chose it); the rows go to results.csv and the points to fastnet.json. Returns the rows."""
    import pandas as pd

    rows = []
    for key, p in trained.points.items():
        if not p.trained:
            continue
        model, _ = engine.load_model(s.run.resolve(p.checkpoint), s.device)
        df, _ = optimize.measure_specs(model, "fastnet", {f"J2-fastnet-{key}": optimize.Spec(mirror=p.mirror)}, s.val, s.test,
                               s.warmup, s.iters, s.meta)
        rows.append(df.assign(train_s=p.train_s))
    rows = pd.concat(rows, ignore_index=True)
    bench.write_results(s.run.results_csv, rows.to_dict("records"))
    records.write(records.FastNetPoints(points=trained.points), s.output(records.FastNetPoints.FILE))
    return rows

"""The FastNet sweep: which (widths, depth) gives the fastest network over each accuracy bar.

    python -m fastcifar.sweep [--out outputs/sweep] [--profile auto|full|smoke] [--teacher-val 92.98]

Each point of POINTS is trained with its recipe (at most a minute on an H100), evaluated on the
validation and test sets with and without the mirror (flip test-time augmentation), and timed at
batch 1 on the stock fast path (FP16, BatchNorm folded, one CUDA graph). Then:

- F1 = the fastest (point, mirror) whose validation accuracy clears the seed's bar (85%);
- F2 = the fastest whose validation accuracy reaches the teacher's (B2's, from outputs/results.csv
  unless --teacher-val is given).

Writes sweep.csv, sweep.md, sweep_pareto.png and chosen.json (records.SweepRecord: what the pipeline
trains) to --out.
On a machine without CUDA it runs a smoke version (tiny data, one epoch, CPU timings, written to
outputs/smoke/sweep) that only proves the code path.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import records, recipe, report
from ..core import atomic, bench, engine, env, optimize
from ..core.data import DataError
from ..core.models import count_params, fastnet_label


@dataclass(frozen=True)
class Point:
    name: str
    widths: tuple
    convs: int
    recipe: str  # a name in recipe.RECIPES
    epochs: float | None = None  # the recipe's own when None

    @property
    def arch(self) -> dict:
        return {"widths": list(self.widths), "convs": self.convs}


POINTS = (
    Point("w16", (16, 32, 64), 2, "short"),
    Point("w32", (32, 64, 128), 2, "short"),
    Point("w64", (64, 128, 256), 2, "short"),
    Point("w64-256", (64, 256, 256), 2, "short"),
    Point("w96-x3", (96, 192, 384), 3, "long"),
    Point("w128-x3", (128, 384, 512), 3, "long"),
    Point("w128-512-x3", (128, 512, 512), 3, "long"),
    Point("w128-512-x3-e90", (128, 512, 512), 3, "long", epochs=90),
)
SMOKE_POINTS = (Point("w8", (8, 8, 16), 2, "short"), Point("w8-x3", (8, 8, 16), 3, "long"))


def timing_spec(device: torch.device, mirror: bool) -> optimize.Spec:
    """The stock fast path every point is timed on: FP16 + BN folded + one CUDA graph (GPU)."""
    if device.type == "cuda":
        return optimize.Spec("fp16", fold_bn=True, cuda_graph=True, mirror=mirror)
    return optimize.Spec(fold_bn=True, mirror=mirror)


def measure_point(point: Point, splits, device, profile: env.Profile, progress: bool = True) -> tuple[list[dict], torch.nn.Module]:
    """Train one point and return two rows (without and with the mirror) and the trained model."""
    r = recipe.for_profile(recipe.point_recipe(point.recipe, point.epochs), profile)
    result = recipe.train_fastnet(splits, point.arch, r, device, progress=progress, name=point.name)
    model = result.model
    test_x, test_y = splits.tensors("test", device)
    val_x, val_y = splits.tensors("val", device)
    rows = []
    for mirror in (False, True):
        variant = optimize.build(model, timing_spec(device, mirror), test_x[:1])
        timing = bench.benchmark_latency(variant, variant.prepare(test_x[:1]), profile.warmup_iters,
                                         profile.measure_iters)
        rows.append({"id": point.name + ("+mirror" if mirror else ""), "point": point.name,
                     "variant": f"{fastnet_label(point.arch)}, {variant.spec.label}",
                     "widths": "/".join(map(str, point.widths)), "convs": point.convs, "mirror": mirror,
                     "recipe": point.recipe, "epochs": r.epochs, "params": count_params(model),
                     "train_s": result.train_s,
                     "val_accuracy": engine.evaluate(model, val_x, val_y, bf16=True, mirror=mirror)[1],
                     "accuracy": engine.evaluate(model, test_x, test_y, bf16=True, mirror=mirror)[1],
                     **timing.row()})
        del variant
    return rows, model


def select(df, bar: float, teacher_val: float | None) -> dict[str, records.SweepChoice]:
    """F1 and F2 from a sweep table (validation accuracy only; the test set plays no part).

    Each entry: the row's point and mirror, and whether its bar was met. When no row reaches the
    teacher's accuracy, F2 is the most accurate row on validation, flagged as missing the bar."""
    choice = {}
    for key, threshold in (("F1", bar), ("F2", teacher_val)):
        if threshold is None or not np.isfinite(threshold):
            continue
        row, met = report.fastest_over(df, threshold)
        choice[key] = records.SweepChoice(point=row.point, id=row.id, mirror=bool(row.mirror),
                                          threshold=float(threshold), met=met, val_accuracy=float(row.val_accuracy),
                                          lat_p95_ms=float(row.lat_p95_ms))
    return choice


def teacher_val_from(results_csv: Path) -> float | None:
    """B2's validation accuracy in a results CSV (the J3 teacher), or None."""
    if not results_csv.is_file():
        return None
    rows = bench.read_results(results_csv)
    b2 = rows[rows.id == "B2"]
    return float(b2.val_accuracy.iloc[0]) if len(b2) else None


def run_sweep(out_dir: Path, profile: env.Profile, points=POINTS, teacher_val: float | None = None,
              data_dir=None, progress: bool = True, n_val: int = 5000):
    import pandas as pd

    from ..core.data import load_cifar, make_splits

    device = env.default_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    splits = make_splits(load_cifar("cifar10", data_dir or env.data_dir()), n_val, 42,
                         train_limit=profile.train_limit, eval_limit=profile.eval_limit)
    meta = {"profile": profile.name, "device_name": env.device_name(device), "torch": torch.__version__,
            "data_source": splits.source, "git_commit": env.git_commit()}
    rows = []
    for point in points:
        point_rows, _ = measure_point(point, splits, device, profile, progress=progress)
        rows += [{**r, **meta} for r in point_rows]
        shown = "  ".join(f"{r['id']}: val {r['val_accuracy']:.2f}% p95 {r['lat_p95_ms']:.4f} ms" for r in point_rows)
        print(f"[sweep] {point.name} trained in {point_rows[0]['train_s']:.1f} s; {shown}", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    df = pd.DataFrame(rows)
    floor_ms = None
    if device.type == "cuda":
        floor = bench.launch_floor(device, profile.warmup_iters, profile.measure_iters)
        floor_ms = floor[bench.FLOOR_GRAPH].host.p95
    chosen = select(df, report.SEED_BAR, teacher_val)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out_dir / "sweep.csv") as tmp:
        df.to_csv(tmp, index=False)
    columns = {"id": "Point", "variant": "Variant", "params": "Params", "epochs": "Epochs", "train_s": "Train (s)",
               "val_accuracy": "Val acc. (%)", "accuracy": "Test acc. (%)", "lat_p50_ms": "p50 (ms)",
               "lat_p95_ms": "p95 (ms)", "gpu_mean_ms": "GPU time (ms)"}
    note = (f"\n{len(points)} points on {meta['device_name']}, torch {meta['torch']}, profile {profile.name}; "
            f"data: {splits.source}; commit {meta['git_commit']}; launch floor (graph replay of one tiny "
            f"kernel) p95 {'n/a' if floor_ms is None else f'{floor_ms:.4f} ms'}; teacher validation "
            f"accuracy used for F2: {teacher_val}.\n")
    atomic.write_text(out_dir / "sweep.md", report.markdown_table(df, columns) + "\n" + note)
    report.sweep_plot(df, report.SEED_BAR, out_dir / "sweep_pareto.png", floor_ms=floor_ms,
                      chosen={key: {"id": c.id} for key, c in chosen.items()})
    record = records.SweepRecord(
        chosen=chosen, points={p.name: records.PointSetting(p.arch, p.recipe, p.epochs) for p in points},
        floor_p95_ms=floor_ms, teacher_val=teacher_val, **meta)
    records.write(record, out_dir / records.SweepRecord.FILE)
    return df, record


def record_path(given: str | None = None, root: Path | None = None) -> Path:
    """Where the notebooks read the sweep's choices: `given` (relative to the project root), else the
    outputs folder's sweep/chosen.json ($FASTCIFAR_OUTPUTS honoured, as the sweep writes it), else the
    committed outputs/sweep/chosen.json of the project."""
    root = root or env.project_root()
    if given:
        return root / given
    written = env.outputs_dir("full") / "sweep" / "chosen.json"
    return written if written.is_file() else root / "outputs" / "sweep" / "chosen.json"


def chosen_points(path: Path) -> dict[str, records.FastNetPoint]:
    """{"F1": FastNetPoint, "F2": ...}: the sweep's choices in chosen.json with how each point is built;
    records.RecordError (one line) when the file is missing, damaged or stale."""
    return records.read(records.SweepRecord, path).chosen_points()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="output folder (default outputs/sweep, or outputs/smoke/sweep)")
    ap.add_argument("--profile", default="auto", choices=["auto", "full", "smoke"])
    ap.add_argument("--teacher-val", type=float, help="B2's validation accuracy (default: from outputs/results.csv)")
    ap.add_argument("--points", nargs="+", metavar="NAME", help=f"subset of {[p.name for p in POINTS]}")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        profile = env.resolve_profile(args.profile)
    except (ValueError, RuntimeError) as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 2
    points = SMOKE_POINTS if profile.is_smoke else POINTS
    if args.points:
        known = {p.name: p for p in points}
        unknown = [n for n in args.points if n not in known]
        if unknown:
            which = "the smoke profile's points (the full ones need a CUDA GPU)" if profile.is_smoke else "the points"
            print(f"sweep: unknown points {unknown}; choose from {which}: {sorted(known)}", file=sys.stderr)
            return 2
        points = tuple(known[n] for n in args.points)
    teacher_val = args.teacher_val
    if teacher_val is None:
        teacher_val = teacher_val_from(env.outputs_dir("full") / "results.csv")
    out = args.out or env.outputs_dir(profile.name) / "sweep"
    try:  # before minutes of training: the folder must take the results
        atomic.ensure_writable(out)
    except OSError as exc:
        print(f"sweep: error: cannot write to {out} ({exc.strerror or exc}); expected a writable folder for --out",
              file=sys.stderr)
        return 2
    if profile.is_smoke:
        print("SMOKE PROFILE: no CUDA GPU here; tiny data, one epoch, CPU timings (not GPU latency).")
    try:
        df, record = run_sweep(out, profile, points, teacher_val, progress=not args.no_progress)
    except DataError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2
    print(report.markdown_table(df, {"id": "point", "params": "params", "train_s": "train s",
                                     "val_accuracy": "val %", "accuracy": "test %", "lat_p95_ms": "p95 ms"}))
    for key, c in record.chosen.items():
        print(f"{key}: {c.id} (val {c.val_accuracy:.2f}% vs {c.threshold:.2f}%: "
              f"{'met' if c.met else 'MISSED'}), p95 {c.lat_p95_ms:.4f} ms")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

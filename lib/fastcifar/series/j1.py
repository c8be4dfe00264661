"""J1, a benchmark we can trust: the data checked, the batch-1 protocol validated over three runs (eager,
then from a CUDA graph), and the launch floor no model can beat. One function per step of
notebooks/J1_benchmark.ipynb, in its order.

Writes results_j1_validation.csv (the V and G rows) and launch_floor.csv (L rows, read by J4 and J5
through `bench.FLOOR_GRAPH`), and the figures j1_*.png.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import report
from ..core import bench, data, env, graphs, models

VALIDATION_CSV = "results_j1_validation.csv"
FLOOR_CSV = "launch_floor.csv"
TOLERANCE = 0.10  # J1 card 4: the p95 spread over the runs must stay under 10%


def iterations(run: env.Run, warmup_iters: int | None, measure_iters: int | None) -> tuple[int, int]:
    """Warm-up and timed calls: the notebook's values, else the profile's (50 and 500 on a GPU)."""
    return (run.profile.warmup_iters if warmup_iters is None else warmup_iters,
            run.profile.measure_iters if measure_iters is None else measure_iters)


def load_data(run: env.Run, seed: int) -> tuple[data.Cifar, data.Splits]:
    """All of CIFAR-10 (J1 checks the whole set, whatever the profile) and its splits; says its provenance."""
    cifar = data.load_cifar("cifar10", run.data_dir)
    splits = data.make_splits(cifar, seed=seed)
    print("provenance:", cifar.source)
    return cifar, splits


def data_facts(cifar: data.Cifar, seed: int, n_val: int = 5000) -> str:
    """Shapes, classes and the stratified validation split: the same on every machine."""
    tr, va = data.stratified_split(cifar.train.labels, n_val, seed)
    per_class = sorted({int(n) for n in np.bincount(cifar.train.labels[va])})
    return "\n".join([f"train {cifar.train.images.shape} {cifar.train.images.dtype} test {cifar.test.images.shape}",
                      f"classes: {len(cifar.classes)} {cifar.classes}",
                      f"train/val split: {len(tr)} {len(va)} | val images per class: {per_class}"])


def augmentation_figures(run: env.Run, cifar: data.Cifar, splits: data.Splits, seed: int, n: int = 16) -> None:
    """The same 16 training images through the torchvision transforms and through the GPU-resident loader."""
    pick = np.random.default_rng(seed).choice(len(splits.train), n, replace=False)
    tv = data.TorchvisionSplit(splits.train.subset(pick), data.torchvision_transform(train=True))
    tv_images = data.denormalise(torch.stack([tv[i][0] for i in range(n)]), splits.mean, splits.std)
    report.image_grid(tv_images, splits.train.labels[pick], cifar.classes,
                      run.fig_dir / "j1_augment_torchvision.png", title="torchvision transforms")
    gpu = data.GpuLoader(splits.train.subset(pick), n, run.device, splits.mean, splits.std, train=True, seed=seed)
    x_aug, y_aug = next(iter(gpu))
    report.image_grid(data.denormalise(x_aug, splits.mean, splits.std), y_aug.cpu().numpy(), cifar.classes,
                      run.fig_dir / "j1_augment_gpu.png", title="GPU loader")


def first_test_image(splits: data.Splits) -> tuple[torch.Tensor, int]:
    """The first test image through the batch-1 torchvision test loader (the benchmark's input); says its shape."""
    loader = torch.utils.data.DataLoader(data.TorchvisionSplit(splits.test, data.torchvision_transform(train=False)),
                                         batch_size=1, shuffle=False)
    x_one, y_one = next(iter(loader))
    print("batch-1 test loader:", tuple(x_one.shape), x_one.dtype, "label", int(y_one))
    return x_one, int(y_one)


@dataclass
class Validation:
    """Repeated runs of the benchmark on one callable: their results, the stability verdict, the rows."""

    results: list[bench.BenchResult]
    stability: dict
    rows: list[dict]
    gpu: bool
    net: torch.nn.Module | None = field(default=None, repr=False)
    x: torch.Tensor | None = field(default=None, repr=False)

    def table(self):
        import pandas as pd

        cols = (["id", "lat_mean_ms", "lat_p50_ms", "lat_p95_ms", "lat_p99_ms", "lat_std_ms", "gpu_mean_ms", "gpu_p95_ms"]
                if self.gpu else ["id", "lat_mean_ms", "lat_p50_ms", "lat_p95_ms", "lat_std_ms"])
        return pd.DataFrame(self.rows)[cols]

    def samples(self) -> dict:
        return {f"run {k}": r.host_samples_ms for k, r in enumerate(self.results, 1)}


def _validation_rows(prefix: str, what: str, net, results, stability, splits, run, runs: int, **extra) -> list[dict]:
    return [{"id": f"{prefix}{k}", "variant": f"ResNet-18 CIFAR, random weights, {what}, run {k}", "model": "resnet18",
             "precision": "fp32", **extra, "size_mb": models.size_mb(net), "params": models.count_params(net),
             "run": k, "notes": f"p95 spread over {runs} runs {stability['p95_spread_pct']}% (tolerance "
                                f"{100 * TOLERANCE:.0f}%)",
             "data_source": splits.source, **r.row(), **run.row_meta()} for k, r in enumerate(results, 1)]


def benchmark_validation(run: env.Run, splits: data.Splits, x_one: torch.Tensor, warmup: int, iters: int,
                         runs: int) -> Validation:
    """A ResNet-18 with random weights (timing does not depend on them), timed `runs` times eagerly in FP32;
    the rows V1..Vn replace results_j1_validation.csv (it holds exactly this run's validation)."""
    net = models.resnet18_cifar().to(run.device).eval()
    x = x_one.to(run.device)  # moved once, before any timing
    with torch.inference_mode():
        print("output shape:", tuple(net(x).shape))
    results = [bench.benchmark_latency(net, x, warmup, iters) for _ in range(runs)]
    stability = bench.stability_check(results, TOLERANCE)
    rows = _validation_rows("V", "FP32 eager", net, results, stability, splits, run, runs)
    bench.write_results(run.out_dir / VALIDATION_CSV, rows, replace="file")
    return Validation(results, stability, rows, run.device.type == "cuda", net, x)


def stability_verdict(validation: Validation, runs: int, smoke: bool) -> str:
    """The seed's criterion, said in words."""
    s = validation.stability
    verdict = "STABLE" if s["stable"] else "NOT STABLE: raise the iteration counts (risk R2)"
    lines = [f"p95 over {runs} runs: {s['p95_ms']} ms -> spread {s['p95_spread_pct']}% "
             f"(tolerance {s['tolerance_pct']:.0f}%): {verdict}"]
    if smoke:
        lines.append("smoke profile: CPU timings; they say nothing about GPU latency")
    return "\n".join(lines)


def graph_replay_validation(run: env.Run, eager: Validation, splits: data.Splits, warmup: int, iters: int,
                            runs: int) -> Validation | None:
    """The same network replayed from one CUDA graph (graphs.capture, called as every graphed variant is:
    the input already in the graph's buffer), `runs` times; rows G1..Gn added to the validation CSV.
    None, said in one line, without CUDA."""
    if run.device.type != "cuda":
        print("graph replay skipped: it needs a CUDA device")
        return None
    replay = graphs.capture(eager.net, eager.x)
    results = [bench.benchmark_latency(replay, replay.static_input, warmup, iters) for _ in range(runs)]
    stability = bench.stability_check(results, TOLERANCE)
    rows = _validation_rows("G", "FP32, CUDA-graph replay", eager.net, results, stability, splits, run, runs,
                            cuda_graph=True)
    bench.write_results(run.out_dir / VALIDATION_CSV, rows, replace=None)
    print(f"CUDA-graph replay, p95 over {runs} runs: {stability['p95_ms']} ms -> spread "
          f"{stability['p95_spread_pct']}%: {'STABLE' if stability['stable'] else 'NOT STABLE'}")
    return Validation(results, stability, rows, True)


def launch_floor(run: env.Run, warmup: int, iters: int):
    """What no model can beat at batch 1 here: bench.launch_floor's call paths (a tiny kernel eagerly, a graph
    of one tiny kernel called the lean way every graphed variant is, and the older replay + device-wide
    synchronize), written to launch_floor.csv as rows L1.. . Returns the table, or None without CUDA."""
    import pandas as pd

    if run.device.type != "cuda":
        print("launch floor skipped: it is a GPU figure and no CUDA device is visible")
        return None
    floor = bench.launch_floor(run.device, warmup, iters)
    rows = [{"id": f"L{k}", "variant": name, "model": "tiny kernel", "precision": "fp32", **r.row(), **run.row_meta()}
            for k, (name, r) in enumerate(floor.items(), 1)]
    bench.write_results(run.out_dir / FLOOR_CSV, rows, replace="file")
    return pd.DataFrame(rows)[["id", "variant", "lat_mean_ms", "lat_p50_ms", "lat_p95_ms", "gpu_mean_ms"]]


def floor_p95(out_dir) -> float | None:
    """The launch floor J1 measured on the call path every graphed row uses (bench.FLOOR_GRAPH), p95 in ms;
    None when J1 did not measure it (no CUDA)."""
    import pandas as pd

    path = out_dir / FLOOR_CSV
    if not path.is_file():
        return None
    floor = pd.read_csv(path)
    found = floor[floor.variant == bench.FLOOR_GRAPH]
    return float(found.lat_p95_ms.iloc[0]) if len(found) else None

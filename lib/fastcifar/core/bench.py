"""Batch-1 latency benchmark (J1 card 3) and the results CSVs.

Protocol: the input is prepared on the device before any loop; `eval()` and `inference_mode`;
warm-up calls untimed, then a synchronize; each measured call is timed
- on the host: perf_counter before the call, synchronize, perf_counter after (the seed's protocol:
  what a caller waits for, launch overhead included), and
- on the GPU (CUDA only): a second loop with CUDA events around each call, no host clock in it.
The host figures are the headline (`lat_*`); the event figures are reported beside them (`gpu_*`).

"Synchronize" waits for the stream the call ran on (torch's current stream), for every row alike: all
of a call's work is queued there, and waiting for the whole device (`torch.cuda.synchronize()`) costs
several microseconds more per call on its own (J1 measures both on a graph of one tiny kernel).
"""
from __future__ import annotations

import functools
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from . import atomic

# Columns of every results CSV; the first block is what the sprint plan's table needs.
RESULT_COLUMNS = [
    "id", "variant", "model", "precision", "accuracy", "val_accuracy",
    "lat_mean_ms", "lat_p50_ms", "lat_p95_ms", "lat_p99_ms", "lat_std_ms", "lat_min_ms", "lat_max_ms",
    "gpu_mean_ms", "gpu_p50_ms", "gpu_p95_ms",
    "size_mb", "params", "speedup", "memory_format", "compile_mode", "cuda_graph", "fold_bn", "compile_s",
    "train_s", "images_per_s", "batch", "warmup_iters", "measure_iters", "run", "notes",
    "profile", "device_name", "torch", "cuda", "cudnn", "data_source", "git_commit", "timestamp",
]
# Read back as text, so ids like "007" and versions like "12.10" survive a rewrite of the CSV.
TEXT_COLUMNS = ("id", "variant", "model", "precision", "memory_format", "compile_mode", "notes", "profile",
                "device_name", "torch", "cuda", "cudnn", "data_source", "git_commit", "timestamp")
FLAG_COLUMNS = ("cuda_graph", "fold_bn")  # True/False
# Everything else is a number; a figure that does not exist is NaN (an empty CSV cell), never "".
NUMERIC_COLUMNS = tuple(c for c in RESULT_COLUMNS if c not in TEXT_COLUMNS and c not in FLAG_COLUMNS)


@dataclass(frozen=True)
class LatencyStats:
    mean: float
    p50: float
    p95: float
    p99: float
    std: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples_ms: Iterable[float]) -> "LatencyStats":
        a = np.asarray(list(samples_ms), dtype=np.float64)
        if a.size == 0 or not np.all(np.isfinite(a)):
            raise ValueError("latency statistics need at least one finite sample")
        p50, p95, p99 = np.percentile(a, [50, 95, 99])
        return cls(float(a.mean()), float(p50), float(p95), float(p99), float(a.std(ddof=1) if a.size > 1 else 0.0),
                   float(a.min()), float(a.max()), int(a.size))


@dataclass
class BenchResult:
    host: LatencyStats
    gpu: LatencyStats | None
    warmup_iters: int
    measure_iters: int
    batch: int
    host_samples_ms: np.ndarray = field(repr=False)
    gpu_samples_ms: np.ndarray | None = field(default=None, repr=False)
    end_to_end: bool = False  # timed from a host input to a host result (benchmark_latency's end_to_end)

    def row(self) -> dict:
        """The latency columns of a results row."""
        h = self.host
        row = {"lat_mean_ms": h.mean, "lat_p50_ms": h.p50, "lat_p95_ms": h.p95, "lat_p99_ms": h.p99,
               "lat_std_ms": h.std, "lat_min_ms": h.min, "lat_max_ms": h.max, "batch": self.batch,
               "warmup_iters": self.warmup_iters, "measure_iters": self.measure_iters}
        if self.gpu is not None:
            row.update(gpu_mean_ms=self.gpu.mean, gpu_p50_ms=self.gpu.p50, gpu_p95_ms=self.gpu.p95)
        return row


def _first_tensor(obj, depth: int = 0) -> torch.Tensor | None:
    """A parameter, buffer or tensor that `obj` computes with: an nn.Module's, a Variant's module, or
    what a function, bound method or functools.partial holds (closure cells, arguments)."""
    if depth > 3 or obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, torch.nn.Module):
        found = next(iter(obj.parameters()), None)
        return found if found is not None else next(iter(obj.buffers()), None)
    seen = []
    module = getattr(obj, "module", None)  # optimize.Variant and wrappers alike
    if isinstance(module, torch.nn.Module):
        seen.append(module)
    if isinstance(obj, functools.partial):
        seen += [obj.func, *obj.args, *obj.keywords.values()]
    seen += [getattr(obj, name, None) for name in ("__self__", "__wrapped__", "fn", "_torchdynamo_orig_callable")]
    for cell in getattr(obj, "__closure__", None) or ():
        try:
            seen.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    seen += [v for v in (getattr(obj, "__defaults__", None) or ()) if isinstance(v, (torch.Tensor, torch.nn.Module))]
    for item in seen:
        if item is not None and item is not obj and (isinstance(item, (torch.Tensor, torch.nn.Module))
                                                     or callable(item)):
            found = _first_tensor(item, depth + 1)
            if found is not None:
                return found
    return None


def _device_of(model, inputs: torch.Tensor) -> torch.device:
    """The device timed: the input's. A model (module, Variant, function) whose weights live elsewhere is
    refused: a transfer would hide inside the timed loop."""
    tensor = _first_tensor(model)
    if tensor is not None and tensor.device != inputs.device:
        raise ValueError(f"inputs are on {inputs.device} but the model is on {tensor.device}; move the "
                         "input to the model's device before benchmarking (no transfers in the timed loop)")
    return inputs.device


def _check_output_device(out, inputs: torch.Tensor) -> None:
    if isinstance(out, torch.Tensor) and out.device != inputs.device:
        raise ValueError(f"the model returned its output on {out.device} for an input on {inputs.device}: it "
                         "moves data between devices inside the call; benchmark a model that stays on one device")


def _end_to_end_device(model, inputs: torch.Tensor, device) -> torch.device:
    """The device an end-to-end call computes on: its input must be on the host (the call uploads it),
    its model (when it shows a tensor) on that device."""
    device = torch.device(device)
    if inputs.device.type != "cpu":
        raise ValueError(f"an end-to-end call starts from an input on the host, not on {inputs.device}")
    tensor = _first_tensor(model)
    if tensor is not None and tensor.device.type != device.type:
        raise ValueError(f"end_to_end={device} but the model is on {tensor.device}")
    return device


def benchmark_latency(model: Callable, inputs: torch.Tensor, warmup_iters: int = 50, measure_iters: int = 500, *,
                      timer: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None,
                      events: bool | None = None, end_to_end=None) -> BenchResult:
    """Time `model(inputs)` call by call; see the module docstring for the protocol.

    `model` is an nn.Module (put in eval mode) or any callable (a compiled model, a graph replay).
    `timer` and `sync` can be replaced (tests use a fake clock); `events` defaults to "on CUDA".

    `end_to_end` (a device) times another thing on purpose: a call that takes `inputs` on the host, one
    image (batch 1), and returns its result on the host, the copies inside the timed call. The model
    computes on that device (sync is its; no GPU events by default: the call waits for the GPU itself);
    the check that model and input share a device does not apply (its result must still come back on
    the host), and the result says `end_to_end`: label its rows "e2e", apart from the protocol's.
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a tensor already on the device, got {type(inputs).__name__}")
    if warmup_iters < 0 or measure_iters < 1:
        raise ValueError(f"need warmup_iters >= 0 and measure_iters >= 1, got {warmup_iters}, {measure_iters}")
    if end_to_end is not None:
        device = _end_to_end_device(model, inputs, end_to_end)
    else:
        device = _device_of(model, inputs)
    on_cuda = device.type == "cuda"
    if sync is None:
        sync = torch.cuda.current_stream(device).synchronize if on_cuda else (lambda: None)
    if events is None:  # an end-to-end call waits inside: events around it would time the host, not the GPU
        events = on_cuda and end_to_end is None
    if isinstance(model, torch.nn.Module):
        model.eval()

    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside the loop would show up as a latency spike (timeit does the same)
    try:
        result = _timed_loops(model, inputs, warmup_iters, measure_iters, timer, sync, events)
    finally:
        if gc_was_enabled:
            gc.enable()
    if end_to_end is not None:
        result.batch, result.end_to_end = 1, True
    return result


def _timed_loops(model, inputs, warmup_iters, measure_iters, timer, sync, events) -> BenchResult:
    host = np.empty(measure_iters)
    with torch.inference_mode():
        for i in range(warmup_iters):
            out = model(inputs)
            if i == 0:
                _check_output_device(out, inputs)
        sync()
        for i in range(measure_iters):
            t0 = timer()
            out = model(inputs)
            sync()
            host[i] = (timer() - t0) * 1e3
            if i == 0 and warmup_iters == 0:
                _check_output_device(out, inputs)
        del out
        gpu = None
        if events:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(measure_iters)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(measure_iters)]
            for i in range(measure_iters):
                starts[i].record()
                model(inputs)
                ends[i].record()
            sync()
            gpu = np.array([s.elapsed_time(e) for s, e in zip(starts, ends)])
    return BenchResult(LatencyStats.of(host), LatencyStats.of(gpu) if gpu is not None else None,
                       warmup_iters, measure_iters, int(inputs.shape[0]) if inputs.dim() else 1, host, gpu)


def p95_spread(results: list[BenchResult]) -> float:
    """(max p95 - min p95) / min p95 over repeated runs: the seed wants it under 10%."""
    p95 = [r.host.p95 for r in results]
    if len(p95) < 2:
        raise ValueError("the spread needs at least two runs")
    return (max(p95) - min(p95)) / min(p95)


def stability_check(results: list[BenchResult], tolerance: float = 0.10) -> dict:
    spread = p95_spread(results)
    return {"runs": len(results), "p95_ms": [round(r.host.p95, 4) for r in results],
            "p95_spread_pct": round(100 * spread, 2), "tolerance_pct": 100 * tolerance, "stable": spread < tolerance}


FLOOR_EAGER = "eager tiny kernel, stream sync"
FLOOR_GRAPH = "graph of one tiny kernel, lean call (graph launch + stream sync)"
FLOOR_DEVICE_SYNC = "graph of one tiny kernel, replay() + torch.cuda.synchronize()"
FLOOR_EVENT = "graph of one tiny kernel, graph launch + event record + spin on query()"


def launch_floor(device, warmup_iters: int = 100, measure_iters: int = 1000) -> dict[str, BenchResult]:
    """What the GPU cannot go under at batch 1: one tiny kernel launched eagerly, and a CUDA graph
    holding one tiny kernel called the way every graphed variant is (graphs.capture: graph launch on
    the current stream, then that stream's synchronize), and the same graph the older way (replay()
    and a device-wide synchronize), to show what the lean call saves, and with a wait that spins on an
    event instead of the stream's synchronize (the alternative the lean call was chosen over). CUDA only."""
    from . import graphs

    device = torch.device(device)
    if device.type != "cuda":
        raise RuntimeError("the launch floor is a GPU figure: it needs a CUDA device")
    x = torch.zeros(1, device=device)
    eager = benchmark_latency(lambda t: t.add_(1), x, warmup_iters, measure_iters)
    replay = graphs.capture(lambda t: t.add_(1), x)
    lean = benchmark_latency(replay, replay.static_input, warmup_iters, measure_iters)
    device_sync = benchmark_latency(lambda t: replay.graph.replay(), replay.static_input, warmup_iters,
                                    measure_iters, sync=lambda: torch.cuda.synchronize(device))
    done = torch.cuda.Event()

    def launch_and_spin(t):
        replay(t)
        done.record()
        while not done.query():
            pass

    event = benchmark_latency(launch_and_spin, replay.static_input, warmup_iters, measure_iters, sync=lambda: None)
    return {FLOOR_EAGER: eager, FLOOR_GRAPH: lean, FLOOR_DEVICE_SYNC: device_sync, FLOOR_EVENT: event}


def kernel_profile(fn: Callable, inputs: torch.Tensor, calls: int = 20) -> dict:
    """Where one call's GPU time goes: CUDA kernels per call and their summed duration (GPU busy time,
    in ms), from the profiler over `calls` calls after a warm-up. CUDA only."""
    from torch.profiler import ProfilerActivity, profile

    if inputs.device.type != "cuda":
        raise RuntimeError("kernel profiles need a CUDA device")
    for _ in range(3):
        fn(inputs)
    torch.cuda.synchronize(inputs.device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn(inputs)
        torch.cuda.synchronize(inputs.device)
    # Copies and memsets count: they are GPU work the call launches like any kernel.
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(e.device_time if hasattr(e, "device_time") else e.cuda_time for e in kernels)
    return {"kernels_per_call": len(kernels) / calls, "gpu_busy_ms": busy_us / calls / 1000.0}


def check_row(row: dict) -> dict:
    unknown = set(row) - set(RESULT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown result columns {sorted(unknown)}; allowed: {RESULT_COLUMNS}")
    return {c: row.get(c, float("nan") if c in NUMERIC_COLUMNS else "") for c in RESULT_COLUMNS}


def write_results(path: str | Path, rows: list[dict], replace: str = "id") -> Path:
    """Add rows to a results CSV, atomically. Rows whose `replace` key (default: id) matches an
    existing row replace it, so a rerun updates its rows instead of piling up duplicates; pass
    replace=None to append, or replace="file" when the file holds exactly one run's rows (rows from an
    earlier run, another device or commit, must not survive beside them)."""
    import pandas as pd

    new = pd.DataFrame([check_row(r) for r in rows], columns=RESULT_COLUMNS)
    path = Path(path)
    if path.is_file() and replace != "file":
        old = read_results(path)
        if replace is not None:
            key = (lambda col: col.astype(float)) if replace in NUMERIC_COLUMNS else (lambda col: col.astype(str))
            old = old[~key(old[replace]).isin(key(new[replace]))]
        new = pd.concat([old, new], ignore_index=True) if len(old) else new
    with atomic.atomic_path(path) as tmp:
        new.to_csv(tmp, index=False)
    return path


def read_results(path: str | Path):
    """Read a results CSV; it must have every column of RESULT_COLUMNS."""
    import pandas as pd

    df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    missing = [c for c in RESULT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a results CSV: missing columns {missing}")
    return numeric_columns(df[RESULT_COLUMNS].copy(), source=path)


def numeric_columns(df, source="results"):
    """`df` with every NUMERIC_COLUMNS column as numbers (empty cells and "" become NaN); text in one
    of them is an error naming the column, not a silent NaN."""
    import pandas as pd

    for c in NUMERIC_COLUMNS:
        if c in df.columns and not pd.api.types.is_numeric_dtype(df[c]):
            values = df[c].replace("", np.nan)
            try:
                df[c] = pd.to_numeric(values)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{source}: column {c!r} must hold numbers ({exc})") from exc
    return df


def protocol_markdown(warmup_iters: int, measure_iters: int, device: str, runs: int = 3) -> str:
    """The measurement protocol as J1 card 5 asks for it, with this run's settings."""
    return f"""| setting | value |
|---|---|
| batch size | 1, input shape (1, 3, 32, 32), one CIFAR-10 test image, normalised |
| input | prepared on the device before the loops: no host-device transfer while timing |
| mode | `model.eval()` and `torch.inference_mode()` |
| warm-up | {warmup_iters} untimed calls, then a synchronize of the stream |
| measured calls | {measure_iters} |
| host timing (headline `lat_*`) | `time.perf_counter()` before the call, `torch.cuda.current_stream().synchronize()`, `perf_counter()` after |
| graphed variants | one CUDA-graph launch per call (`cudaGraphLaunch` on the current stream), the input already in the graph's buffer |
| GPU timing (`gpu_*`) | a second loop of {measure_iters} calls between two `torch.cuda.Event`s each, one synchronize at the end |
| statistics | mean, p50, p95, p99, std, min, max in ms |
| precision | FP32 unless the variant says otherwise |
| stability | {runs} runs; spread of p95 = (max - min) / min, must stay under 10% |
| device | {device} |
"""

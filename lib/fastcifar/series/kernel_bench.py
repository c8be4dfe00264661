"""GPU benchmark of the fused FastNet backends against PyTorch, on random or trained weights.

    python -m fastcifar.kernel_bench --out DIR [--checkpoint PATH] [--quick]

For each network (random FastNets of three shapes, or the checkpoint's) and mirror off/on it checks
parity against the FP32 model (max error relative to max |logit|, argmax agreement on random inputs),
then times every path with fastcifar.core.bench.benchmark_latency: PyTorch FP16 + BN folded + CUDA graph,
the same + compile(default), fused-layers and fused-persistent (direct and in a CUDA graph), and a
CUDA-graph replay of one tiny kernel (the floor). A path that fails is a row with its error.
Fused rows also give their compiled kernels' registers, spilled bytes and shared memory (max_regs,
spill_bytes, max_shared_bytes, kernel_resources). Tuning rows: --programs N (persistent grid size),
--max-block-k K (K steps of deep layers), --target-tiles T (tiles per layer) and --num-stages S
(software pipelining), both fused backends.
Last, rows "barrier only" time the grid barrier alone on several grid sizes (per_barrier_us).
Writes DIR/fused_bench.csv and DIR/fused_bench_env.json; prints a table last.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

SHAPES = (((32, 64, 128), 2), ((64, 256, 256), 2), ((128, 384, 512), 3))

PATHS = {  # name -> Spec fields (besides mirror); all FP16
    "torch fp16 folded graph": dict(fold_bn=True, cuda_graph=True),
    "torch fp16 folded compile graph": dict(fold_bn=True, compile_mode="default", cuda_graph=True),
    "fused-layers direct": dict(backend="fused-layers"),
    "fused-layers graph": dict(backend="fused-layers", cuda_graph=True),
    "fused-persistent direct": dict(backend="fused-persistent"),
    "fused-persistent graph": dict(backend="fused-persistent", cuda_graph=True),
}


def fp32_logits(model, xs: torch.Tensor, mirror: bool) -> torch.Tensor:
    """The FP32 model's logits (TF32 convolutions off), averaged with the mirror when asked."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            out = torch.cat([model(xs[i:i + 250]) for i in range(0, len(xs), 250)])
            if mirror:
                flipped = xs.flip(3)
                out = (out + torch.cat([model(flipped[i:i + 250]) for i in range(0, len(xs), 250)])) / 2
        return out
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def parity(variant, xs: torch.Tensor, want: torch.Tensor, tolerance: float) -> dict:
    """Worst |logit error| / max |logit| over the inputs, argmax agreement over all inputs and over the
    decisive ones (top-2 margin above twice the tolerance, which no FP16 error within it can flip)."""
    worst, agree, decisive, decisive_agree = 0.0, 0, 0, 0
    with torch.inference_mode():
        for i in range(len(xs)):
            got = variant(variant.prepare(xs[i:i + 1]))[0].float()
            w = want[i]
            scale = w.abs().max()
            worst = max(worst, ((got - w).abs().max() / scale).item())
            same = bool(got.argmax() == w.argmax())
            agree += same
            top2 = w.topk(2).values
            if top2[0] - top2[1] > 2 * tolerance * scale:
                decisive += 1
                decisive_agree += same
    return {"max_rel_err": worst, "argmax_agree": agree / len(xs), "decisive_inputs": decisive,
            "decisive_argmax_agree": decisive_agree / decisive if decisive else float("nan"),
            "within_tolerance": worst <= tolerance}


def kernels_per_call(fn, x, calls: int = 5) -> float:
    """CUDA kernels (and copies) the profiler sees per call."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        fn(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn(x)
            torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA) / calls


def floor_fn(device):
    """A CUDA-graph replay of one tiny kernel: the least any graphed path can cost."""
    buf = torch.zeros(1, device=device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        buf.add_(1)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        buf.add_(1)

    def replay(_x):
        graph.replay()
        return buf

    return replay, buf


BARRIER_ROUNDS = 10
BARRIER_PATH = "barrier only: graph of {} grid barriers, programs={}"


def barrier_row(programs: int, args, device, floor_p50, env_cols) -> dict:
    """The persistent kernel's grid barrier alone: one launch of `programs` programs passing
    BARRIER_ROUNDS barriers, replayed from a CUDA graph; per_barrier_us is its p50 above the floor's,
    per barrier."""
    from fastcifar.core.optimize import capture_cuda_graph

    from ..core.kernels.persistent import make_barrier_fn

    row = {"network": "-", "widths": "", "convs": "", "mirror": "", "path": BARRIER_PATH.format(BARRIER_ROUNDS, programs),
           "status": "ok", "error": "", **env_cols}
    try:
        fn = make_barrier_fn(programs, BARRIER_ROUNDS, device)
        dummy = torch.zeros(1, device=device)
        fn(dummy)  # compile outside the capture
        torch.cuda.synchronize(device)
        replay = capture_cuda_graph(fn, dummy)
        row.update(time_path(replay, dummy, args))
        if floor_p50:
            row["per_barrier_us"] = (row["host_p50_ms"] - floor_p50) * 1000 / BARRIER_ROUNDS
    except Exception as exc:
        row.update(status="failed", error=_error_text(exc))
    print(f"  {row['path']}: {row['status']} {row['error']} p50={row.get('host_p50_ms', float('nan')):.4f} ms "
          f"per barrier {row.get('per_barrier_us', float('nan')):.2f} us", flush=True)
    return row


def _error_text(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip()[:300]


def time_path(fn, x, args) -> dict:
    from fastcifar.core.bench import benchmark_latency

    res = benchmark_latency(fn, x, warmup_iters=args.warmup, measure_iters=args.iters)
    row = {"host_p50_ms": res.host.p50, "host_p95_ms": res.host.p95, "host_mean_ms": res.host.mean}
    if res.gpu is not None:
        row.update(gpu_p50_ms=res.gpu.p50, gpu_mean_ms=res.gpu.mean)
    row["kernels_per_call"] = kernels_per_call(fn, x)
    return row


class NetworkData:
    """A network with its parity inputs and FP32 logits (mirror off and on), computed once."""

    def __init__(self, label, model, parity_n, device):
        self.label, self.model = label, model
        self.arch = getattr(model, "arch", {})
        gen = torch.Generator().manual_seed(0)
        self.xs = torch.randn(parity_n, 3, 32, 32, generator=gen).to(device)
        self.example = self.xs[:1].clone()
        self.want = {mirror: fp32_logits(model, self.xs, mirror) for mirror in (False, True)}


PROGRAMS_PATH = "fused-persistent graph programs={}"
BLOCK_K_PATH = "{} graph max_block_k={}"
TILES_PATH = "{} graph target_tiles={}"
STAGES_PATH = "{} graph num_stages={}"


def tuning_knob(path: str) -> tuple[str, str, int]:
    """(backend, knob, value) of a tuning row's path "<backend> graph <knob>=<value>"."""
    head, knob = path.rsplit(" ", 1)
    name, value = knob.split("=")
    return head.split(" ")[0], name, int(value)


def tuned_variant(net: "NetworkData", mirror: bool, path: str):
    """A tuning row's variant: a fused backend replayed from a CUDA graph with one knob set, named in
    the path as "<backend> graph <knob>=<value>" (knob programs, max_block_k, target_tiles or num_stages)."""
    from fastcifar.core.optimize import Spec, Variant, capture_cuda_graph

    from ..core.kernels import build as build_fused

    backend, name, value = tuning_knob(path)
    spec = Spec(precision="fp16", mirror=mirror, backend=backend, cuda_graph=True)
    fn, notes = build_fused(net.model, backend, net.example.half(), mirror=mirror, **{name: value})
    variant = Variant(spec, fn, net.model, torch.float16, torch.contiguous_format, notes=list(notes))
    variant.fn = capture_cuda_graph(fn, variant.prepare(net.example))
    return variant


def kernel_resource_columns(variant) -> dict:
    """Registers, spills and shared memory of a fused path's compiled kernels (nothing for torch
    paths): the most registers of any kernel, all spilled bytes, the most shared memory, and each
    kernel as registers/spills/shared."""
    from ..core.kernels import resources

    fn = getattr(variant.fn, "captured", variant.fn)  # a CUDA-graph replay keeps the captured fn
    rows = resources(fn)
    if not rows:
        return {}
    known = lambda key: [r[key] for r in rows if r[key] is not None]  # noqa: E731
    return {"max_regs": max(known("n_regs"), default=""), "spill_bytes": sum(known("n_spills")),
            "max_shared_bytes": max(known("shared_bytes"), default=""),
            "kernel_resources": " ".join(f"{r['n_regs']}/{r['n_spills']}/{r['shared_bytes']}" for r in rows)}


def run_path(net: NetworkData, mirror: bool, path: str, args, device, tolerance, deadline, env_cols) -> dict:
    """Build, check and time one path; a failure becomes the row's status and error."""
    from fastcifar.core.optimize import Spec, build

    row = {"network": net.label, "widths": "/".join(map(str, net.arch.get("widths", []))),
           "convs": net.arch.get("convs"), "mirror": mirror, "path": path, "status": "ok", "error": "",
           "tolerance": tolerance, **env_cols}
    if "compile" in path and time.perf_counter() > deadline:
        row.update(status="skipped", error="time budget spent (--time-budget)")
    else:
        variant = None
        try:
            t0 = time.perf_counter()
            if path in PATHS:
                variant = build(net.model, Spec(precision="fp16", mirror=mirror, **PATHS[path]), net.example)
            else:
                variant = tuned_variant(net, mirror, path)
            torch.cuda.synchronize(device)
            row["build_s"] = time.perf_counter() - t0
            row["compile_s"] = variant.compile_s if variant.compile_s is not None else ""
            row["notes"] = "; ".join(variant.notes)
            row.update(kernel_resource_columns(variant))
            row.update(parity(variant, net.xs, net.want[mirror], tolerance))
            row.update(time_path(variant.fn, variant.prepare(net.example), args))
        except Exception as exc:  # one failed path is a row with its error, not the end of the run
            row.update(status="failed", error=_error_text(exc))
        variant = None  # its graph and buffers go before the next path is built
        torch.cuda.empty_cache()
    print(f"  {net.label} mirror={mirror} {path}: {row['status']} {row['error']}"
          f" p95={row.get('host_p95_ms', float('nan')):.4f} ms"
          + (f" [{row['kernel_resources']}]" if row.get("kernel_resources") else ""), flush=True)
    return row


def networks(args):
    """(label, FP32 CUDA model) pairs: the checkpoint's, or random FastNets of SHAPES."""
    from fastcifar.core.models import FastNet, fastnet_label

    if args.checkpoint:
        from fastcifar.core.engine import CheckpointError, load_model

        try:
            model, _ = load_model(args.checkpoint, device="cuda")
        except (CheckpointError, OSError) as exc:
            raise UsageError(f"cannot load --checkpoint {args.checkpoint}: {exc}") from exc
        if not isinstance(model, FastNet):
            raise UsageError(f"--checkpoint must hold a FastNet (fastcifar.core.engine.save_checkpoint of one), "
                             f"got a {type(model).__name__}")
        return [(fastnet_label(model.arch) + " (checkpoint)", model)]
    from ..core.kernels.samples import random_fastnet

    shapes = SHAPES[:1] if args.quick else SHAPES
    return [(fastnet_label({"widths": w, "convs": c}) + " (random)", random_fastnet(w, c).cuda().eval())
            for w, c in shapes]


def plan(nets: list, paths: list[str]) -> list[tuple]:
    """(network, mirror, path) in run order: the persistent kernel, the one path whose failure mode
    can be a hang (its grid barrier), runs last, so that everything else is measured and written."""
    order = sorted(paths, key=lambda p: "persistent" in p)
    first = [(n, m, p) for n in nets for m in (False, True) for p in order if "persistent" not in p]
    last = [(n, m, p) for n in nets for m in (False, True) for p in order if "persistent" in p]
    return first + last


class UsageError(Exception):
    pass


def print_table(rows: list[dict]) -> None:
    cols = [("network", 30), ("mirror", 6), ("path", 32), ("status", 7), ("host_p50_ms", 8), ("host_p95_ms", 8),
            ("gpu_p50_ms", 8), ("kernels_per_call", 7), ("max_rel_err", 9), ("argmax_agree", 7),
            ("max_regs", 5), ("spill_bytes", 6), ("max_shared_bytes", 7)]
    print(" ".join(f"{c[:w]:>{w}}" for c, w in cols))
    for r in rows:
        cells = []
        for c, w in cols:
            v = r.get(c, "")
            cells.append(f"{v:>{w}.4g}" if isinstance(v, float) else f"{str(v)[:w]:>{w}}")
        print(" ".join(cells))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for fused_bench.csv and fused_bench_env.json")
    ap.add_argument("--checkpoint", help="a FastNet checkpoint (fastcifar.core.engine.save_checkpoint) instead of random nets")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--parity-n", type=int, default=1000, help="random inputs for the parity check")
    ap.add_argument("--time-budget", type=float, default=150.0,
                    help="seconds after which torch.compile paths are skipped (the rest always run)")
    ap.add_argument("--quick", action="store_true", help="only the smallest random shape")
    ap.add_argument("--programs", type=int, nargs="+", default=[], metavar="N",
                    help="extra rows: the persistent kernel in a CUDA graph on a grid of N programs")
    ap.add_argument("--max-block-k", type=int, nargs="+", default=[], metavar="K",
                    help="extra rows: both fused backends in a CUDA graph with K steps of up to K "
                         "(a power of two >= 64; see pack.tile_sizes)")
    ap.add_argument("--target-tiles", type=int, nargs="+", default=[], metavar="T",
                    help="extra rows: both fused backends in a CUDA graph with layers split into about T "
                         "tiles (64 is the default; see pack.tile_sizes)")
    ap.add_argument("--num-stages", type=int, nargs="+", default=[], metavar="S",
                    help="extra rows: both fused backends in a CUDA graph with S software-pipeline stages "
                         "(K steps whose loads are in flight at once; Triton's default is 3)")
    ap.add_argument("--paths", nargs="+", metavar="TEXT",
                    help="run only the paths whose name contains one of these (e.g. graph fused-layers)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("fastcifar.kernel_bench times CUDA kernels: run it on a machine with a CUDA GPU.", file=sys.stderr)
        return 2
    if args.warmup < 0 or args.iters < 1 or args.parity_n < 1:
        print("--warmup must be >= 0, --iters and --parity-n >= 1.", file=sys.stderr)
        return 2

    import pandas as pd
    import triton

    from fastcifar.core import atomic, env

    from ..core.kernels import TOLERANCE

    start = time.perf_counter()
    device = torch.device("cuda")
    paths = [p for p in PATHS if not args.paths or any(t in p for t in args.paths)]
    if any(n < 1 or n > torch.cuda.get_device_properties(0).multi_processor_count for n in args.programs):
        print("--programs takes grid sizes from 1 to the number of SMs (all programs must be resident).",
              file=sys.stderr)
        return 2
    if any(k < 64 or k & (k - 1) for k in args.max_block_k):
        print("--max-block-k takes powers of two >= 64 (64 is the default tiling).", file=sys.stderr)
        return 2
    if any(s < 1 for s in args.num_stages):
        print("--num-stages takes stage counts >= 1.", file=sys.stderr)
        return 2
    if any(t < 1 for t in args.target_tiles):
        print("--target-tiles takes tile counts >= 1.", file=sys.stderr)
        return 2
    paths += [PROGRAMS_PATH.format(n) for n in args.programs]
    paths += [TILES_PATH.format(b, t) for t in args.target_tiles for b in ("fused-layers", "fused-persistent")]
    paths += [STAGES_PATH.format(b, n) for n in args.num_stages for b in ("fused-layers", "fused-persistent")]
    paths += [BLOCK_K_PATH.format(b, k) for k in args.max_block_k for b in ("fused-layers", "fused-persistent")]
    if not paths:
        print(f"--paths {' '.join(args.paths)} matches none of: {', '.join(PATHS)}.", file=sys.stderr)
        return 2
    try:
        nets = [NetworkData(label, model, args.parity_n, device) for label, model in networks(args)]
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    report = env.environment_report(device)
    report["triton"] = triton.__version__
    env_cols = {"device": report["device"], "torch": report["torch"], "triton": triton.__version__,
                "git_commit": report["git_commit"]}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "fused_bench_env.json", json.dumps(report, indent=2, default=str))

    def write(rows):  # after every row: a run stopped midway (a hung kernel) keeps what it measured
        floor_p95 = rows[0].get("host_p95_ms")
        for r in rows:
            if floor_p95 and "host_p95_ms" in r:
                r["p95_over_floor"] = r["host_p95_ms"] / floor_p95
        atomic.write_text(out / "fused_bench.csv", pd.DataFrame(rows).to_csv(index=False))

    floor_row = {"network": "-", "widths": "", "convs": "", "mirror": "", "path": "floor: graph of one tiny kernel",
                 "status": "ok", "error": "", **env_cols}
    try:
        floor, buf = floor_fn(device)
        floor_row.update(time_path(floor, buf, args))
    except Exception as exc:
        floor_row.update(status="failed", error=_error_text(exc))
    rows = [floor_row]
    write(rows)
    deadline = start + args.time_budget
    for net, mirror, path in plan(nets, paths):
        rows.append(run_path(net, mirror, path, args, device, TOLERANCE, deadline, env_cols))
        write(rows)
    # last, like the persistent kernel: a barrier that never opens would hang the run
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for programs in sorted({p for p in (2, 16, 32, 64, sms, *args.programs) if p <= sms}):
        rows.append(barrier_row(programs, args, device, floor_row.get("host_p50_ms"), env_cols))
        write(rows)
    report["total_s"] = time.perf_counter() - start
    atomic.write_text(out / "fused_bench_env.json", json.dumps(report, indent=2, default=str))
    print(f"wrote {out / 'fused_bench.csv'} and {out / 'fused_bench_env.json'} in {report['total_s']:.0f} s")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

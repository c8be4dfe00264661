"""GPU benchmark of FastNet's one-launch megakernel against PyTorch, on random or trained weights.

    python -m fastcifar.kernel_bench --out DIR [--checkpoint PATH] [--quick]

For each network (random FastNets of SHAPES, or the checkpoint's) and mirror off/on it checks parity
against the FP32 model (max error relative to max |logit|, argmax agreement on random inputs), then
times every path of PATHS with fastcifar.core.bench.benchmark_latency (the series' protocol: host timer,
the stream's synchronize; graphed paths launched as graphs.capture does), beside the launch floor (a
graph of one tiny kernel through the same call path). A path that fails, or a network the kernel does
not fit, is a row with its reason. Megakernel rows give registers, local memory (spills) and shared
memory per CTA; last, where the time goes inside one launch (%globaltimer stamps at each layer's end,
kernels.layer_timing). Writes DIR/kernel_bench.csv, DIR/kernel_layers.csv and DIR/kernel_bench_env.json
(device, versions, commit); prints a table last. About a minute on an H200 (--quick: the F1 shape only).
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
    "megakernel direct": dict(backend="megakernel"),
    "megakernel graph": dict(backend="megakernel", cuda_graph=True),
}
FLOOR_PATH = "floor: graph of one tiny kernel"


def fp32_logits(model, xs: torch.Tensor, mirror: bool) -> torch.Tensor:
    """The FP32 model's logits (TF32 convolutions off), averaged with the mirror when asked."""
    from ..core.optimize import with_mirror

    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        fn = with_mirror(model) if mirror else model
        with torch.no_grad():
            return torch.cat([fn(xs[i:i + 250]) for i in range(0, len(xs), 250)])
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


def time_path(fn, x, args) -> dict:
    from ..core.bench import benchmark_latency, kernel_profile

    res = benchmark_latency(fn, x, warmup_iters=args.warmup, measure_iters=args.iters)
    row = {"host_p50_ms": res.host.p50, "host_p95_ms": res.host.p95, "host_mean_ms": res.host.mean}
    if res.gpu is not None:
        row.update(gpu_p50_ms=res.gpu.p50, gpu_mean_ms=res.gpu.mean)
    row.update(kernel_profile(fn, x, calls=5))
    return row


def _error_text(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip()[:300]


class NetworkData:
    """A network with its parity inputs and FP32 logits (mirror off and on), computed once."""

    def __init__(self, label, model, parity_n, device):
        self.label, self.model = label, model
        self.arch = getattr(model, "arch", {})
        gen = torch.Generator().manual_seed(0)
        self.xs = torch.randn(parity_n, 3, 32, 32, generator=gen).to(device)
        self.example = self.xs[:1].clone()
        self.want = {mirror: fp32_logits(model, self.xs, mirror) for mirror in (False, True)}


def run_path(net: NetworkData, mirror: bool, path: str, args, device, tolerance, deadline, env_cols) -> dict:
    """Build, check and time one path; a failure (or a network the kernel does not fit) is the row's
    status and reason."""
    from ..core.optimize import Spec, Unavailable, build

    row = {"network": net.label, "widths": "/".join(map(str, net.arch.get("widths", []))),
           "convs": net.arch.get("convs"), "mirror": mirror, "path": path, "status": "ok", "error": "",
           "tolerance": tolerance, **env_cols}
    if "compile" in path and time.perf_counter() > deadline:
        row.update(status="skipped", error="time budget spent (--time-budget)")
    else:
        variant = None
        try:
            t0 = time.perf_counter()
            variant = build(net.model, Spec(precision="fp16", mirror=mirror, **PATHS[path]), net.example)
            torch.cuda.synchronize(device)
            row["build_s"] = time.perf_counter() - t0
            row["compile_s"] = variant.compile_s if variant.compile_s is not None else ""
            row["notes"] = "; ".join(variant.notes)
            kernel = getattr(variant.fn, "kernel", None)
            if kernel is not None:
                row.update({k: kernel.resources.get(k, "") for k in ("registers", "local_bytes", "shared_bytes", "cluster", "grid")})
            row.update(parity(variant, net.xs, net.want[mirror], tolerance))
            row.update(time_path(variant.fn, variant.prepare(net.example), args))
        except Unavailable as exc:
            row.update(status="not run", error=str(exc)[:300])
        except Exception as exc:  # one failed path is a row with its error, not the end of the run
            row.update(status="failed", error=_error_text(exc))
        variant = None  # its graph and buffers go before the next path is built
        torch.cuda.empty_cache()
    print(f"  {net.label} mirror={mirror} {path}: {row['status']} {row['error'][:120]}"
          f" p95={row.get('host_p95_ms', float('nan')):.4f} ms", flush=True)
    return row


def networks(args):
    """(label, FP32 CUDA model) pairs: the checkpoint's, or random FastNets of SHAPES."""
    from ..core.models import FastNet, fastnet_label

    if args.checkpoint:
        from ..core.engine import CheckpointError, load_model

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


class UsageError(Exception):
    pass


def print_table(rows: list[dict]) -> None:
    cols = [("network", 30), ("mirror", 6), ("path", 32), ("status", 7), ("host_p50_ms", 8), ("host_p95_ms", 8),
            ("gpu_p50_ms", 8), ("kernels_per_call", 7), ("max_rel_err", 9), ("argmax_agree", 7),
            ("registers", 5), ("local_bytes", 6), ("shared_bytes", 7)]
    print(" ".join(f"{c[:w]:>{w}}" for c, w in cols))
    for r in rows:
        cells = []
        for c, w in cols:
            v = r.get(c, "")
            cells.append(f"{v:>{w}.4g}" if isinstance(v, float) else f"{str(v)[:w]:>{w}}")
        print(" ".join(cells))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for kernel_bench.csv, kernel_layers.csv, kernel_bench_env.json")
    ap.add_argument("--checkpoint", help="a FastNet checkpoint (fastcifar.core.engine.save_checkpoint) instead of random nets")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--parity-n", type=int, default=1000, help="random inputs for the parity check")
    ap.add_argument("--time-budget", type=float, default=150.0,
                    help="seconds after which torch.compile paths are skipped (the rest always run)")
    ap.add_argument("--quick", action="store_true", help="only the smallest random shape")
    ap.add_argument("--paths", nargs="+", metavar="TEXT",
                    help="run only the paths whose name contains one of these (e.g. megakernel)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: fastcifar.kernel_bench times CUDA kernels: run it on a machine with a CUDA GPU.", file=sys.stderr)
        return 2
    if args.warmup < 0 or args.iters < 1 or args.parity_n < 1:
        print("error: --warmup must be >= 0, --iters and --parity-n >= 1.", file=sys.stderr)
        return 2
    paths = [p for p in PATHS if not args.paths or any(t in p for t in args.paths)]
    if not paths:
        print(f"error: --paths {' '.join(args.paths)} matches none of: {', '.join(PATHS)}.", file=sys.stderr)
        return 2

    import pandas as pd

    from ..core import atomic, bench, env
    from ..core.kernels import TOLERANCE, layer_timing

    start = time.perf_counter()
    device = torch.device("cuda")
    try:
        nets = [NetworkData(label, model, args.parity_n, device) for label, model in networks(args)]
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = env.environment_report(device)
    env_cols = {"device": report["device"], "torch": report["torch"], "git_commit": report["git_commit"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "kernel_bench_env.json", json.dumps(report, indent=2, default=str))

    def write(rows):  # after every row: a run stopped midway keeps what it measured
        floor_p95 = rows[0].get("host_p95_ms")
        for r in rows:
            if floor_p95 and "host_p95_ms" in r:
                r["p95_over_floor"] = r["host_p95_ms"] / floor_p95
        atomic.write_text(out / "kernel_bench.csv", pd.DataFrame(rows).to_csv(index=False))

    floor_row = {"network": "-", "widths": "", "convs": "", "mirror": "", "path": FLOOR_PATH,
                 "status": "ok", "error": "", **env_cols}
    try:
        floors = bench.launch_floor(device, args.warmup, args.iters)
        lean = floors[bench.FLOOR_GRAPH]
        floor_row.update(host_p50_ms=lean.host.p50, host_p95_ms=lean.host.p95, host_mean_ms=lean.host.mean)
    except Exception as exc:
        floor_row.update(status="failed", error=_error_text(exc))
    rows = [floor_row]
    write(rows)
    deadline = start + args.time_budget
    layers = []
    for net in nets:
        for mirror in (False, True):
            for path in paths:
                rows.append(run_path(net, mirror, path, args, device, TOLERANCE, deadline, env_cols))
                write(rows)
            if rows[-1]["path"].startswith("megakernel") and rows[-1]["status"] == "ok":
                for r in layer_timing(net.model, net.example, mirror=mirror):
                    layers.append({"network": net.label, "mirror": mirror, **r, **env_cols})
                atomic.write_text(out / "kernel_layers.csv", pd.DataFrame(layers).to_csv(index=False))
    report["total_s"] = time.perf_counter() - start
    atomic.write_text(out / "kernel_bench_env.json", json.dumps(report, indent=2, default=str))
    print(f"wrote {out / 'kernel_bench.csv'}, {out / 'kernel_layers.csv'} and {out / 'kernel_bench_env.json'} "
          f"in {report['total_s']:.0f} s")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Inference variants (J4): one description -> one callable, measured and evaluated the same way.

A `Spec` says: precision (fp32, fp16 by autocast, fp16 by .half()), memory format, BatchNorm folded
into the convolution before it, torch.compile mode, explicit CUDA-graph capture (graphs.capture), the
mirror, and the backend (PyTorch, or FastNet's one-launch CUDA megakernel). `build` turns a
trained model and a Spec into a `Variant`: the callable, its input layout and the compile time
(reported apart from latency, J4-06). When compilation fails the variant falls back to eager and
says so (J4-09).
"""
from __future__ import annotations

import copy
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.fx
from torch import nn

from . import bench, graphs
from .graphs import Unavailable  # noqa: F401  (optimize.Unavailable: what callers catch)
from .models import count_params, size_mb

PRECISIONS = ("fp32", "fp16-autocast", "fp16")
# "torch": PyTorch modules (eager, compiled, graphed). "megakernel": a FastNet in one CUDA C++ kernel
# launch (`fastcifar.core.kernels`), from its own packed FP16 weights.
BACKENDS = ("torch", "megakernel")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Spec:
    precision: str = "fp32"
    channels_last: bool = False
    fold_bn: bool = False
    compile_mode: str | None = None
    cuda_graph: bool = False
    mirror: bool = False  # flip test-time augmentation inside the call: logits of x and of x mirrored, averaged
    backend: str = "torch"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {self.backend!r}")
        if self.backend != "torch" and (self.precision != "fp16" or self.compile_mode or self.channels_last):
            raise ValueError(f"backend {self.backend!r} computes in FP16 from its own packed weights: "
                             "use precision='fp16', no compile_mode, channels_last=False")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, not {self.compile_mode!r}")
        if self.cuda_graph and self.compile_mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"compile mode {self.compile_mode!r} already captures CUDA graphs; "
                             "use 'max-autotune-no-cudagraphs' or 'default' with cuda_graph=True")

    @property
    def label(self) -> str:
        parts = [self.precision.upper().replace("-AUTOCAST", " autocast")]
        if self.backend == "megakernel":
            parts.append("one-launch megakernel")
        if self.channels_last:
            parts.append("channels_last")
        if self.fold_bn:
            parts.append("BN folded")
        if self.compile_mode:
            parts.append(f"compile({self.compile_mode})")
        if self.cuda_graph:
            parts.append("CUDA graph")
        if self.mirror:
            parts.append("mirror TTA")
        return " + ".join(parts)

    @property
    def static_shape(self) -> bool:
        """Graph replays and compiled code are specialised to the batch-1 shape they were built for."""
        return self.cuda_graph or self.compile_mode is not None or self.backend != "torch"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        return cls(**d)  # older records lack mirror/backend: the defaults apply


@dataclass
class Variant:
    spec: Spec
    fn: Callable[[torch.Tensor], torch.Tensor]
    module: nn.Module
    input_dtype: torch.dtype
    memory_format: torch.memory_format
    compile_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Input in this variant's dtype and layout; done once, before any timed loop. A graphed
        variant gets it in its graph's own input buffer when the shape is the graph's (one image),
        so that its calls launch the graph and copy nothing (see graphs.capture)."""
        x = x.to(dtype=self.input_dtype).contiguous(memory_format=self.memory_format)
        static = getattr(self.fn, "static_input", None)
        if static is not None and x.shape == static.shape:
            static.copy_(x)
            return static
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for x. A graphed or megakernel variant returns its own output buffer, which the next
        call overwrites (no copy inside the timed call): clone what you keep."""
        return self.fn(x)


# ---------------------------------------------------------------- BatchNorm folding

def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv whose output equals bn(conv(x)) in eval mode, by torch's own arithmetic
    (w' = w * g * rsqrt(var + eps), b' = (b - mu) * g * rsqrt(var + eps) + beta)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv.eval(), bn.eval())


def fold_batchnorm(model: nn.Module) -> torch.fx.GraphModule:
    """Trace the model and fold every BatchNorm2d that directly follows a Conv2d used only there.

    A model that knows how to fold itself (FastNet: BN after a max-pool) provides `fold_batchnorm()`."""
    if hasattr(model, "fold_batchnorm"):
        return model.fold_batchnorm()
    model = copy.deepcopy(model).eval()
    traced = torch.fx.symbolic_trace(model)
    modules = dict(traced.named_modules())
    folded = 0
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules.get(src.target), nn.Conv2d) and len(src.users) == 1):
            continue
        bn, conv = modules[node.target], modules[src.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        parent_name, _, attr = src.target.rpartition(".")
        setattr(traced.get_submodule(parent_name) if parent_name else traced, attr, _fold_conv_bn(conv, bn))
        node.replace_all_uses_with(src)
        traced.graph.erase_node(node)
        folded += 1
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    traced.folded_batchnorms = folded
    return traced


# ---------------------------------------------------------------- building a variant

def with_mirror(fn: Callable) -> Callable:
    """Flip test-time augmentation in one call: the batch and its horizontal mirror go through `fn` as
    one batch of 2B (at batch 1 this costs about the same as one image), the two logits are averaged."""
    def mirrored(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]  # not len(x): torch.export would freeze that into the exported batch size
        out = fn(torch.cat([x, x.flip(3)]))
        return (out[:n] + out[n:]) * 0.5
    return mirrored


def _build_megakernel(model: nn.Module, spec: Spec, example: torch.Tensor) -> Variant:
    """A FastNet in one CUDA C++ kernel launch (a GPU path; Unavailable elsewhere, and where the
    network does not fit the kernel, with the reason)."""
    if example.device.type != "cuda":
        raise Unavailable(f"backend {spec.backend!r} runs a CUDA kernel")
    from . import kernels

    module = copy.deepcopy(model).eval().to(example.device)
    try:
        fn, notes = kernels.build(module, spec.backend, example.half(), mirror=spec.mirror)
    except (ValueError, TypeError) as exc:  # the plan says why this network does not fit
        raise Unavailable(str(exc)) from exc
    variant = Variant(spec, fn, module, torch.float16, torch.contiguous_format, compile_s=fn.compile_s,
                      notes=list(notes))
    if spec.cuda_graph:
        variant.fn = graphs.capture(fn, variant.prepare(example))
        variant.fn.kernel = fn.kernel
    return variant


def build(model: nn.Module, spec: Spec, example: torch.Tensor, allow_compile: bool = True) -> Variant:
    """Apply `spec` to a copy of a trained model. `example` is a normalised fp32 input batch on the
    model's device (batch 1 for latency). Raises Unavailable when the spec cannot run here."""
    device = example.device
    if spec.backend != "torch":
        return _build_megakernel(model, spec, example)
    module = copy.deepcopy(model).eval().to(device)
    notes: list[str] = []
    if spec.fold_bn:
        module = fold_batchnorm(module)
        notes.append(f"{module.folded_batchnorms} BatchNorms folded")
    input_dtype = torch.float32
    if spec.precision == "fp16":
        if device.type != "cuda":
            raise Unavailable("FP16 weights are a GPU path here (CPU half convolutions are slow or missing)")
        module = module.half()
        input_dtype = torch.float16
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    module = module.to(memory_format=memory_format)

    if spec.precision == "fp16-autocast":
        if device.type != "cuda":
            raise Unavailable("FP16 autocast is a GPU path")

        def eager(x, _m=module):
            with torch.autocast("cuda", dtype=torch.float16):
                return _m(x)
    else:
        eager = module
    if spec.mirror:
        eager = with_mirror(eager)

    variant = Variant(spec, eager, module, input_dtype, memory_format, notes=notes)
    x = variant.prepare(example)
    fn = eager
    if spec.compile_mode is not None:
        if not allow_compile:
            raise Unavailable("torch.compile variants are skipped in this profile")
        if device.type != "cuda" and spec.compile_mode in ("reduce-overhead", "max-autotune"):
            raise Unavailable(f"compile mode {spec.compile_mode!r} relies on CUDA graphs")
        compiled = torch.compile(eager, mode=None if spec.compile_mode == "default" else spec.compile_mode)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                for _ in range(3):  # cudagraph-trees record on the second and third calls
                    compiled(x)
            sync()
            fn = compiled
            variant.compile_s = time.perf_counter() - t0
        except Exception as exc:  # J4-09: log and fall back rather than stop the notebook
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            notes.append(f"compile failed ({last[:200]}); fell back to eager")
            torch._dynamo.reset()
    if spec.cuda_graph:
        fn = graphs.capture(fn, x)
    variant.fn = fn
    return variant


# ---------------------------------------------------------------- measuring a variant

@torch.inference_mode()
def predictions(variant: Variant, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes. Static-shape variants (graphs, compiled) are called exactly as they are
    timed, one image at a time; eager variants run in batches (same function, faster)."""
    x = variant.prepare(images)
    step = 1 if variant.spec.static_shape else batch_size
    return torch.cat([variant(x[i:i + step]).argmax(1) for i in range(0, len(x), step)])


def accuracy(variant: Variant, images: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (predictions(variant, images) == labels).float().mean().item()


def evaluated(model: nn.Module, spec: Spec, val: tuple, test: tuple, allow_compile: bool = True,
              known: dict | None = None) -> tuple[Variant, dict]:
    """Build a variant and evaluate it on validation and test (images, labels) pairs on the device.

    `known` ({"accuracy", "val_accuracy"}) are accuracies this very build (same weights, same Spec)
    already measured earlier in the same run: they are reused instead of measured again.
    Returns the variant and the columns of a results row that do not depend on timing."""
    variant = build(model, spec, test[0][:1], allow_compile=allow_compile)
    if known is not None:
        acc, val_acc = float(known["accuracy"]), float(known["val_accuracy"])
    else:
        acc, val_acc = accuracy(variant, *test), accuracy(variant, *val)
    row = {"precision": spec.precision, "accuracy": acc, "val_accuracy": val_acc,
           "memory_format": "channels_last" if spec.channels_last else "contiguous",
           "compile_mode": spec.compile_mode or "", "cuda_graph": spec.cuda_graph, "fold_bn": spec.fold_bn,
           "compile_s": variant.compile_s if variant.compile_s is not None else float("nan"),
           "size_mb": size_mb(variant.module), "params": count_params(variant.module),
           "notes": "; ".join(variant.notes)}
    return variant, row


def measure_specs(model: nn.Module, model_name: str, specs: dict[str, Spec], val: tuple, test: tuple, warmup_iters: int,
          measure_iters: int, meta: dict, allow_compile: bool = True):
    """Measure each spec of one model in turn (J1 benchmark, validation and test accuracy).

    The first spec is the reference: `speedup` is its p95 over each variant's p95, from this run.
    Specs that cannot run here get a row saying why. Returns (DataFrame, {id: host samples in ms})."""
    import pandas as pd

    from .models import arch_of, label

    rows, samples = [], {}
    for vid, spec in specs.items():
        base = {"id": vid, "variant": f"{label(model_name, arch_of(model))}, {spec.label}", "model": model_name, **meta}
        try:
            variant, row = evaluated(model, spec, val, test, allow_compile)
            result = bench.benchmark_latency(variant, variant.prepare(test[0][:1]), warmup_iters, measure_iters)
            row.update(result.row())
            samples[vid] = result.host_samples_ms
            del variant
        except Unavailable as exc:
            row = {"precision": spec.precision, "notes": f"skipped: {exc}"}
        rows.append({**base, **row})
        shown = (f"val {row['val_accuracy']:.2f}%  test {row['accuracy']:.2f}%  p95 {row['lat_p95_ms']:.4f} ms"
                 if "lat_p95_ms" in row else row["notes"])
        print(f"  {vid:<14} {spec.label:<58} {shown}", flush=True)
        if test[0].device.type == "cuda":
            torch.cuda.empty_cache()
    df = _with_all_columns(pd.DataFrame(rows))
    df["speedup"] = df.lat_p95_ms.iloc[0] / df.lat_p95_ms
    return df, samples


def _with_all_columns(df):
    """Every results column present (NaN where a figure does not exist here, e.g. GPU time on a CPU),
    numeric columns as numbers."""
    df = df.reindex(columns=list(dict.fromkeys([*bench.RESULT_COLUMNS, *df.columns])))
    return bench.numeric_columns(df)


def remeasure(entries: list[dict], val: tuple, test: tuple, runs: int, warmup_iters: int, measure_iters: int,
              meta: dict, allow_compile: bool = True):
    """J5: build every entry ({id, variant, model_name, model, spec}) once, evaluate it once, then time
    all of them `runs` times, interleaved, so slow drifts of the machine hit every variant alike.
    An entry that carries "accuracy" and "val_accuracy" (J4 measured that build in the same run) keeps
    them instead of being evaluated again. Returns (one row per entry and run, {id: host samples of
    the first run})."""
    import pandas as pd

    ready = []
    for e in entries:
        known = e if "accuracy" in e and "val_accuracy" in e else None
        t0 = time.perf_counter()
        try:
            variant, row = evaluated(e["model"], e["spec"], val, test, allow_compile, known=known)
        except Unavailable as exc:
            print(f"  {e['id']:<14} skipped: {exc}", flush=True)
            continue
        ready.append((e, variant, variant.prepare(test[0][:1]), row))
        print(f"  {e['id']:<14} built{'' if known else ' and evaluated'} in {time.perf_counter() - t0:.1f} s", flush=True)
    rows, samples = [], {}
    for r in range(1, runs + 1):
        t0 = time.perf_counter()
        for e, variant, x, row in ready:
            result = bench.benchmark_latency(variant, x, warmup_iters, measure_iters)
            samples.setdefault(e["id"], result.host_samples_ms)
            rows.append({"id": e["id"], "variant": e["variant"], "model": e["model_name"], **meta, **row,
                         **result.row(), "run": r})
        print(f"  run {r}/{runs} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return _with_all_columns(pd.DataFrame(rows)), samples


@torch.inference_mode()
def parity(model: nn.Module, variant: Variant, test: tuple, n_random: int = 1000, seed: int = 0) -> dict:
    """How closely a variant computes what the FP32 model computes (the same mirror applied to both):
    logits on `n_random` random inputs (max |difference| relative to the largest |logit|), and on the
    test set the share of identical predictions and the accuracy of each."""
    reference = copy.deepcopy(model).float().eval().to(test[0].device)
    ref_fn = with_mirror(reference) if variant.spec.mirror else reference
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(n_random, *test[0].shape[1:], generator=gen).to(test[0].device)
    worst = 0.0
    for i in range(n_random):
        x = noise[i:i + 1]
        ref, got = ref_fn(x).float(), variant(variant.prepare(x)).float()
        worst = max(worst, ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item())
    ref_pred = torch.cat([ref_fn(test[0][i:i + 1000]).argmax(1) for i in range(0, len(test[0]), 1000)])
    got_pred = predictions(variant, test[0])
    return {"max_rel_logit_diff_random": worst, "same_prediction_pct": 100.0 * (ref_pred == got_pred).float().mean().item(),
            "accuracy_fp32_pct": 100.0 * (ref_pred == test[1]).float().mean().item(),
            "accuracy_variant_pct": 100.0 * (got_pred == test[1]).float().mean().item(), "n_random": n_random}

"""FastNet's batch-1 inference kernel: the whole network in one CUDA C++ launch (see `build`).

- pack.py: the folded model's weights in kernel layout (FP16 weights, FP32 biases).
- reference.py: the same computation in plain PyTorch (CPU), the kernel's specification.
- common.cu: device helpers both kernels share (FP16, GELU, tensor-core MMA, mbarriers, bulk copies).
- megakernel.cu: the device code for small widths (F1): one thread-block cluster, every weight and
  activation in shared memory.
- megakernel.py: its host side: tiling plan, per-CTA weight images, generated source, NVRTC compile,
  cluster launch on torch's stream, per-layer timing (`layer_times`), the callable both kernels are
  wrapped in (`callable_kernel`). `build` takes grid.py's kernel when the network does not fit one
  cluster.
- grid.cu, grid.py: the megakernel for large widths (F2): one CTA per SM, activations in global
  memory (L2), per-layer ready counters instead of grid-wide barriers.
- samples.py: random FastNets for checks and benchmarks.
The GPU benchmark is `python -m fastcifar.kernel_bench --out DIR` (series/kernel_bench.py).
Nothing here needs a GPU to import; NVRTC (cuda-bindings) is imported when a kernel is compiled.
"""
from __future__ import annotations

import torch

from .pack import PackedNet, pack  # noqa: F401
from .reference import reference  # noqa: F401

BACKENDS = ("megakernel",)

# Logits of the kernel against the FP32 model: max |difference| <= TOLERANCE * max |logit|.
# FP16 keeps 11 significant bits (relative rounding <= 2^-11 ~ 4.9e-4); the input, the weights and
# each of the 7-10 stored activations are rounded once, and the errors add up through the layers.
# Random FastNets measure a few 1e-3; 2e-2 leaves room for that spread.
TOLERANCE = 2e-2

# The kernel against the reference: the same FP16 rounding points, only the order of FP32 additions
# differs, which can move an activation's FP16 rounding by one unit (4.9e-4 relative) here and there.
KERNEL_TOLERANCE = 2e-3


def build(model, backend: str, example, mirror: bool = False, **options):
    """Pack a FastNet (its BatchNorms folded here if they are not yet) for `backend` and return
    (fn, notes): fn maps one (1, 3, 32, 32) FP16 contiguous CUDA image to (1, classes) FP32 logits
    in one kernel launch, with the mirror (flip TTA) inside when `mirror`. It allocates nothing and
    never synchronises, so a CUDA graph can capture it; it returns its own output buffer, overwritten
    by the next call (clone what you keep). `options` go to megakernel.build_kernel (cluster, threads,
    input_kind, timing, mean, std). A network too wide for one cluster runs on grid.py's kernel (FP16
    input), which its notes say. Raises ValueError when the network fits neither."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    from . import megakernel

    if not isinstance(example, torch.Tensor) or example.device.type != "cuda":
        raise megakernel.MegakernelError("the megakernel runs on CUDA: pass a CUDA example input")
    packed = pack(model, mirror=mirror, device=example.device)
    kernel, why_not_one_cluster = _kernel(packed, options)
    fn = megakernel.callable_kernel(kernel, packed, example, options.get("input_kind", "fp16"))
    if not why_not_one_cluster:
        return fn, megakernel.notes(kernel)
    from . import grid

    return fn, grid.notes(kernel) + [f"not one cluster: {why_not_one_cluster}"]


def _kernel(packed: PackedNet, options: dict):
    """(compiled kernel, why not one cluster or ""): one cluster (megakernel.py) where the packed
    network fits, else every SM (grid.py, FP16 input only). `options` go to megakernel.build_kernel."""
    from . import megakernel

    try:
        return megakernel.build_kernel(packed, **options), ""
    except megakernel.DoesNotFit as exc:  # too wide for one cluster (F2): every SM, activations through L2
        from . import grid

        if options.get("input_kind", "fp16") != "fp16":
            raise ValueError(f"{exc}; the grid megakernel takes FP16 input only") from exc
        return grid.build_kernel(packed, timing=options.get("timing", False)), str(exc)


def layer_timing(model, example, mirror: bool = False, calls: int = 200, **options) -> list[dict]:
    """Where the time goes inside one launch: a build that stamps %globaltimer at each layer's end,
    averaged over `calls` launches (megakernel.layer_times). CUDA only."""
    from . import megakernel

    packed = pack(model, mirror=mirror, device=example.device)
    kernel, _ = _kernel(packed, {**options, "timing": True})
    return megakernel.layer_times(kernel, example.to(torch.float16).contiguous(), calls)

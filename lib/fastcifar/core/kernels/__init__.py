"""Fused batch-1 inference kernels for FastNet (see `build`).

- pack.py: the folded model's weights in kernel layout (FP16 weights, FP32 biases), activation buffers.
- reference.py: the same computation in plain PyTorch (CPU), the kernels' specification.
- triton_tiles.py: Triton device code (conv tile with fused epilogue, head, grid barrier).
- layers.py: backend "fused-layers", one kernel per layer plus one for the head.
- persistent.py: backend "fused-persistent", the whole network in one launch (and a kernel of grid
  barriers only, to time the barrier alone).
- samples.py: random FastNets for checks and benchmarks.
- interpret_check.py: the kernels on the CPU under TRITON_INTERPRET=1 (run as a module).
The GPU benchmark (`python -m fastcifar.kernel_bench --out DIR`, in series/kernel_bench.py) reports each
fused path's registers, spills and shared memory (`resources`) and tuning rows (grid size, tiling, barrier).
Triton is imported only when a backend is built, so packing and the reference work without it.
"""
from __future__ import annotations

import time

import torch

from .pack import PackedNet, pack  # noqa: F401
from .reference import reference  # noqa: F401

BACKENDS = ("fused-layers", "fused-persistent")

# Logits of the fused path against the FP32 model: max |difference| <= TOLERANCE * max |logit|.
# FP16 keeps 11 significant bits (relative rounding <= 2^-11 ~ 4.9e-4); the input, the weights and
# each of the 7-10 stored activations are rounded once, and the errors add up through the layers.
# Random FastNets measure a few 1e-3 on the CPU reference; 2e-2 leaves room for that spread.
TOLERANCE = 2e-2

# Kernels against the reference: the same FP16 rounding points, only the order of FP32 additions
# differs, which can move an activation's FP16 rounding by one unit (4.9e-4 relative) here and there.
KERNEL_TOLERANCE = 2e-3


def resources(fn) -> list[dict]:
    """Registers per thread, spilled bytes and shared memory of each kernel fn launched on its last
    call (from the compiled kernels' metadata; empty under the interpreter, which compiles nothing).
    Many registers limit how many warps an SM keeps in flight; any spill puts local-memory traffic
    into every K step."""
    out = []
    for kernel in getattr(fn, "compiled", []):
        if kernel is None or not hasattr(kernel, "metadata"):
            continue
        try:
            kernel._init_handles()  # loads the binary if needed; fills n_regs and n_spills
        except Exception:  # resources are a report, never a reason to fail a build
            pass
        out.append({"name": getattr(kernel, "name", "?"), "n_regs": getattr(kernel, "n_regs", None),
                    "n_spills": getattr(kernel, "n_spills", None),
                    "shared_bytes": getattr(kernel.metadata, "shared", None)})
    return out


def resources_text(rows: list[dict]) -> str:
    """One line for notes and tables: the most registers, total spills and most shared memory."""
    if not rows:
        return "kernel resources unknown"
    regs = [r["n_regs"] for r in rows if r["n_regs"] is not None]
    spills = [r["n_spills"] for r in rows if r["n_spills"] is not None]
    shared = [r["shared_bytes"] for r in rows if r["shared_bytes"] is not None]
    return (f"{len(rows)} kernel(s): registers per thread max {max(regs) if regs else '?'}, "
            f"spills {sum(spills) if spills else '?'}, shared memory max {max(shared) if shared else '?'} bytes")


def make_fn(packed: PackedNet, backend: str, programs: int | None = None, num_warps: int = 4,
            num_stages: int | None = None):
    """The callable for `backend` over an already packed net (CUDA tensors, or CPU ones when
    TRITON_INTERPRET=1 is set before Triton is imported)."""
    if backend == "fused-layers":
        from .layers import make_layers_fn

        return make_layers_fn(packed, num_warps=num_warps, num_stages=num_stages)
    if backend == "fused-persistent":
        from .persistent import make_persistent_fn

        return make_persistent_fn(packed, programs=programs, num_warps=num_warps, num_stages=num_stages)
    raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")


def build(model, backend: str, example, mirror: bool = False, programs: int | None = None, num_warps: int = 4,
          target_tiles: int = 64, max_block_k: int = 64, num_stages: int | None = None):
    """Pack a FastNet (its BatchNorms folded here if they are not yet) for `backend` ("fused-layers"
    or "fused-persistent") and return (fn, notes).

    fn maps a (1, 3, 32, 32) FP16 contiguous CUDA tensor to (1, num_classes) FP32 logits, with the
    mirror (flip TTA) inside when `mirror`. It allocates nothing and never synchronises, so it can be
    captured in a CUDA graph; it returns its own output buffer, overwritten by the next call (clone
    what you keep). The first call compiles the kernels; build makes that call on `example`.

    Tuning knobs: `programs` (persistent grid; default min(SMs, most tiles of a layer)), `num_warps`
    per program, `target_tiles` and `max_block_k` (how layers are tiled, see pack.tile_sizes),
    `num_stages` (K steps whose loads are in flight at once; None: Triton's default)."""
    if num_stages is not None and num_stages < 1:
        raise ValueError(f"num_stages must be >= 1 (or None for Triton's default), not {num_stages}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if not isinstance(example, torch.Tensor) or example.device.type != "cuda":
        raise ValueError("the fused kernels run on CUDA: pass a CUDA example input")
    packed = pack(model, mirror=mirror, device=example.device, target_tiles=target_tiles,
                  max_block_k=max_block_k)
    fn = make_fn(packed, backend, programs=programs, num_warps=num_warps, num_stages=num_stages)
    x = example.to(torch.float16).contiguous()
    t0 = time.perf_counter()
    fn(x)  # compiles every kernel once, outside any timed loop or graph capture
    torch.cuda.synchronize(example.device)
    compile_s = time.perf_counter() - t0
    notes = [f"{backend}: {fn.kernels_per_call} kernel launch(es) per call",
             f"FP16 weights and activations, FP32 biases and accumulation; {packed.weight_bytes() / 1e6:.2f} MB packed",
             f"first call (Triton compile) {compile_s:.1f} s",
             resources_text(resources(fn))]
    if backend == "fused-persistent":
        notes.append(f"{fn.programs} programs, grid barrier between layers")
    if mirror:
        notes.append("mirror TTA inside the kernels (batch of 2, logits averaged)")
    fn.packed = packed
    fn.compile_s = compile_s
    return fn, notes

"""Backend "fused-persistent": the whole FastNet in one launch.

A grid of at most one program per SM walks the layers in order; each layer's output tiles are dealt
round-robin to the programs, and a grid-wide barrier (kernels.grid_barrier) separates the layers.
Activations live in small per-layer global buffers (they stay in L2), weights in the packed buffers.
Layer slots are fixed: 0 is the whitening conv, 1 + 3 g + i the i-th conv of group g; with two convs
per group the third slot of each group is unused and its output pointer aliases the second's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_tiles import conv_tile, grid_barrier, head_tile
from .layers import check_input, head_constants
from .pack import PackedNet


@triton.jit
def _phase(pid, nprog, in_ptr, w_ptr, b_ptr, skip_ptr, out_ptr, batch,
           C_IN: tl.constexpr, H_IN: tl.constexpr, C_OUT: tl.constexpr, H_OUT: tl.constexpr,
           KSIZE: tl.constexpr, PAD: tl.constexpr, POOL: tl.constexpr, RESIDUAL: tl.constexpr,
           INPUT_NCHW: tl.constexpr, K_PAD: tl.constexpr, N_PAD: tl.constexpr,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    tiles = tl.cdiv(batch * H_OUT * H_OUT, BLOCK_M) * (N_PAD // BLOCK_N)
    t = pid
    while t < tiles:  # not range(pid, tiles, nprog): see kernels' docstring
        conv_tile(t, in_ptr, w_ptr, b_ptr, skip_ptr, out_ptr, batch, C_IN, H_IN, C_OUT, H_OUT,
                  KSIZE, PAD, POOL, RESIDUAL, INPUT_NCHW, K_PAD, N_PAD, BLOCK_M, BLOCK_N, BLOCK_K)
        t += nprog


@triton.jit
def _group(pid, nprog, sync_ptr, batch, in_ptr, wa, ba, aa, wb, bb, ab, wc, bc, ac,
           C_IN: tl.constexpr, C: tl.constexpr, H_IN: tl.constexpr, H_OUT: tl.constexpr, CONVS: tl.constexpr,
           KA: tl.constexpr, NA: tl.constexpr, BMA: tl.constexpr, BNA: tl.constexpr, BKA: tl.constexpr,
           KB: tl.constexpr, NB: tl.constexpr, BMB: tl.constexpr, BNB: tl.constexpr, BKB: tl.constexpr,
           KC: tl.constexpr, NC: tl.constexpr, BMC: tl.constexpr, BNC: tl.constexpr, BKC: tl.constexpr):
    # conv, 2x2 max-pool, GELU
    _phase(pid, nprog, in_ptr, wa, ba, aa, aa, batch, C_IN, H_IN, C, H_OUT, 3, 1, 1, 0, 0, KA, NA, BMA, BNA, BKA)
    grid_barrier(sync_ptr, pid, nprog)
    _phase(pid, nprog, aa, wb, bb, ab, ab, batch, C, H_OUT, C, H_OUT, 3, 1, 0, 0, 0, KB, NB, BMB, BNB, BKB)
    if CONVS == 3:  # third conv, GELU, + the group's first activation
        grid_barrier(sync_ptr, pid, nprog)
        _phase(pid, nprog, ab, wc, bc, aa, ac, batch, C, H_OUT, C, H_OUT, 3, 1, 0, 1, 0, KC, NC, BMC, BNC, BKC)


@triton.jit(do_not_specialize=["batch"])  # mirror on and off share compiled code
def fastnet_kernel(x_ptr, head_ptr, out_ptr, sync_ptr, batch,
                   w0, b0, a0, w1, b1, a1, w2, b2, a2, w3, b3, a3, w4, b4, a4, w5, b5, a5,
                   w6, b6, a6, w7, b7, a7, w8, b8, a8, w9, b9, a9,
                   CONVS: tl.constexpr, C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
                   K0: tl.constexpr, N0: tl.constexpr, BM0: tl.constexpr, BN0: tl.constexpr, BK0: tl.constexpr,
                   K1: tl.constexpr, N1: tl.constexpr, BM1: tl.constexpr, BN1: tl.constexpr, BK1: tl.constexpr,
                   K2: tl.constexpr, N2: tl.constexpr, BM2: tl.constexpr, BN2: tl.constexpr, BK2: tl.constexpr,
                   K3: tl.constexpr, N3: tl.constexpr, BM3: tl.constexpr, BN3: tl.constexpr, BK3: tl.constexpr,
                   K4: tl.constexpr, N4: tl.constexpr, BM4: tl.constexpr, BN4: tl.constexpr, BK4: tl.constexpr,
                   K5: tl.constexpr, N5: tl.constexpr, BM5: tl.constexpr, BN5: tl.constexpr, BK5: tl.constexpr,
                   K6: tl.constexpr, N6: tl.constexpr, BM6: tl.constexpr, BN6: tl.constexpr, BK6: tl.constexpr,
                   K7: tl.constexpr, N7: tl.constexpr, BM7: tl.constexpr, BN7: tl.constexpr, BK7: tl.constexpr,
                   K8: tl.constexpr, N8: tl.constexpr, BM8: tl.constexpr, BN8: tl.constexpr, BK8: tl.constexpr,
                   K9: tl.constexpr, N9: tl.constexpr, BM9: tl.constexpr, BN9: tl.constexpr, BK9: tl.constexpr,
                   HEAD_C: tl.constexpr, CLASSES: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_J: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    # whitening: 2x2 conv on the NCHW input (mirrored for batch row 1), GELU: 32 -> 31
    _phase(pid, nprog, x_ptr, w0, b0, a0, a0, batch, 3, 32, C0, 31, 2, 0, 0, 0, 1, K0, N0, BM0, BN0, BK0)
    grid_barrier(sync_ptr, pid, nprog)
    _group(pid, nprog, sync_ptr, batch, a0, w1, b1, a1, w2, b2, a2, w3, b3, a3, C0, C1, 31, 15, CONVS,
           K1, N1, BM1, BN1, BK1, K2, N2, BM2, BN2, BK2, K3, N3, BM3, BN3, BK3)
    grid_barrier(sync_ptr, pid, nprog)
    _group(pid, nprog, sync_ptr, batch, a3, w4, b4, a4, w5, b5, a5, w6, b6, a6, C1, C2, 15, 7, CONVS,
           K4, N4, BM4, BN4, BK4, K5, N5, BM5, BN5, BK5, K6, N6, BM6, BN6, BK6)
    grid_barrier(sync_ptr, pid, nprog)
    _group(pid, nprog, sync_ptr, batch, a6, w7, b7, a7, w8, b8, a8, w9, b9, a9, C2, C3, 7, 3, CONVS,
           K7, N7, BM7, BN7, BK7, K8, N8, BM8, BN8, BK8, K9, N9, BM9, BN9, BK9)
    grid_barrier(sync_ptr, pid, nprog)
    if pid == 0:
        head_tile(a9, head_ptr, out_ptr, batch, HEAD_C, 9, CLASSES, BLOCK_C, BLOCK_P, BLOCK_J)


@triton.jit
def barrier_rounds_kernel(sync_ptr, ROUNDS: tl.constexpr):
    """ROUNDS grid barriers and nothing else: what the barrier alone costs on a given grid."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    for _ in tl.static_range(ROUNDS):
        grid_barrier(sync_ptr, pid, nprog)


def make_barrier_fn(programs: int, rounds: int, device, num_warps: int = 4):
    """fn(_) -> counter: one launch of `programs` programs passing `rounds` grid barriers."""
    if torch.device(device).type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        if programs > sms:
            raise ValueError(f"{programs} programs cannot all be resident on {sms} SMs: the grid barrier would hang")
    sync = torch.zeros(1, dtype=torch.int32, device=device)

    def fn(_x=None):
        barrier_rounds_kernel[(programs,)](sync, ROUNDS=rounds, num_warps=num_warps)
        return sync

    fn.sync = sync
    return fn


def _check_spatial(packed: PackedNet) -> None:
    """The kernel's slots hard-code FastNet's map sizes (32 -> 31 -> 15 -> 7 -> 3)."""
    sizes = [packed.layers[0].h_in] + [l.h_out for l in packed.layers]
    expected = [32, 31] + [h for h in (15, 7, 3) for _ in range(packed.convs)]
    if sizes != expected or packed.convs not in (2, 3) or packed.head_positions != 9:
        raise ValueError(f"the persistent kernel expects map sizes {expected}, got {sizes}")


def slot_arguments(packed: PackedNet) -> tuple[list, dict]:
    """Pointer arguments (w, b, out) for the 10 layer slots and the compile-time constants."""
    _check_spatial(packed)
    args, const = [], {"CONVS": packed.convs, "C0": packed.layers[0].c_out}
    for g in range(3):
        const[f"C{g + 1}"] = packed.layers[1 + g * packed.convs].c_out
    slots = [0] + [1 + g * packed.convs + i if i < packed.convs else None for g in range(3) for i in range(3)]
    for s, index in enumerate(slots):
        if index is None:  # unused third conv: alias the second conv's slot, never written or read
            args += args[-3:]
            const.update({f"{k}{s}": const[f"{k}{s - 1}"] for k in ("K", "N", "BM", "BN", "BK")})
            continue
        layer = packed.layers[index]
        args += [layer.weight, layer.bias, packed.activations[index]]
        const.update({f"K{s}": layer.k_pad, f"N{s}": layer.n_pad, f"BM{s}": layer.block_m,
                      f"BN{s}": layer.block_n, f"BK{s}": layer.block_k})
    head = head_constants(packed)
    const.update(HEAD_C=head["C"], CLASSES=head["CLASSES"], BLOCK_C=head["BLOCK_C"], BLOCK_P=head["BLOCK_P"],
                 BLOCK_J=head["BLOCK_J"])
    return args, const


def default_programs(packed: PackedNet, device: torch.device) -> int:
    """One program per SM at most (all must be resident for the barrier), and no more than the
    largest layer has tiles."""
    most_tiles = max(l.tiles(packed.batch) for l in packed.layers)
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(sms, most_tiles))


def make_persistent_fn(packed: PackedNet, programs: int | None = None, num_warps: int = 4,
                       num_stages: int | None = None):
    """fn(x) -> logits in one launch of `programs` programs (default: default_programs).

    fn returns the packed net's logits buffer itself (no allocation): the next call overwrites it."""
    device = packed.head.device
    if programs is None:
        programs = default_programs(packed, device)
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        if programs > sms:
            raise ValueError(f"{programs} programs cannot all be resident on {sms} SMs: the grid barrier would hang")
    slot_args, const = slot_arguments(packed)
    sync = torch.zeros(1, dtype=torch.int32, device=device)  # the barrier counter; see grid_barrier
    tail = (packed.head, packed.logits, sync, packed.batch, *slot_args)
    grid = (programs,)
    options = {"num_warps": num_warps} if num_stages is None else {"num_warps": num_warps, "num_stages": num_stages}
    compiled = [None]  # the launched kernel, for its resources (see resources)

    def fn(x):
        check_input(x)
        compiled[0] = fastnet_kernel[grid](x, *tail, **options, **const)
        return packed.logits

    fn.programs = programs
    fn.sync = sync
    fn.kernels_per_call = 1
    fn.compiled = compiled
    return fn

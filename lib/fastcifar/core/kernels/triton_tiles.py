"""Triton device code shared by both fused backends: one conv output tile, the head, a grid barrier.

Only long-standing Triton features are used (tl.dot, masked and volatile loads, stores, scalar atomics
with `sem=`, tl.debug_barrier), so the same source runs on Triton 3.x and under TRITON_INTERPRET=1 on
the CPU. Batch size is a runtime argument: mirror on and off share compiled code.

Loops whose bounds are runtime values (the batch, a program's share of the tiles) are `while` loops,
never `range(...)`: the interpreter of Triton 3.6 turns a runtime scalar into a Python int with
int() of a one-element array, which numpy 2 refuses; a `while` condition goes through bool(), which
every version handles.
"""
from __future__ import annotations

import triton
import triton.language as tl

if hasattr(tl, "erf"):
    @triton.jit
    def _gelu(y):  # exact GELU, as nn.GELU()
        return 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476))
else:  # older releases keep erf among the CUDA libdevice functions only
    from triton.language.extra.cuda import libdevice

    @triton.jit
    def _gelu(y):
        return 0.5 * y * (1.0 + libdevice.erf(y * 0.7071067811865476))


@triton.jit
def _input_tile(in_ptr, b, ch, cw, m_ok, k, C_IN: tl.constexpr, H_IN: tl.constexpr, KSIZE: tl.constexpr,
                PAD: tl.constexpr, INPUT_NCHW: tl.constexpr):
    """The (BLOCK_M, BLOCK_K) implicit-GEMM input tile for conv output positions (ch, cw)."""
    tap = k // C_IN
    c = k % C_IN
    ih = ch[:, None] + (tap // KSIZE)[None, :] - PAD
    iw = cw[:, None] + (tap % KSIZE)[None, :] - PAD
    ok = m_ok[:, None] & (k < KSIZE * KSIZE * C_IN)[None, :]
    ok = ok & (ih >= 0) & (ih < H_IN) & (iw >= 0) & (iw < H_IN)
    if INPUT_NCHW:  # the network input: one image, batch row 1 reads it mirrored
        iw = tl.where(b[:, None] == 1, H_IN - 1 - iw, iw)
        addr = (c[None, :] * H_IN + ih) * H_IN + iw
    else:
        addr = ((b[:, None] * H_IN + ih) * H_IN + iw) * C_IN + c[None, :]
    # .cg: read through L2 only, never a stale L1 line of a buffer another SM just wrote
    return tl.load(in_ptr + addr, mask=ok, other=0.0, cache_modifier=".cg")


@triton.jit
def conv_tile(tile, in_ptr, w_ptr, b_ptr, skip_ptr, out_ptr, batch,
              C_IN: tl.constexpr, H_IN: tl.constexpr, C_OUT: tl.constexpr, H_OUT: tl.constexpr,
              KSIZE: tl.constexpr, PAD: tl.constexpr, POOL: tl.constexpr, RESIDUAL: tl.constexpr,
              INPUT_NCHW: tl.constexpr, K_PAD: tl.constexpr, N_PAD: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Output tile `tile` of one layer: rows are (batch, row, column) positions of the output map,
    columns are output channels. With POOL (0 or 1) each row is the max of the 2x2 conv outputs it
    covers: four accumulators share each weight tile, so the weights are read once per tile."""
    n_blocks = N_PAD // BLOCK_N
    rows = batch * H_OUT * H_OUT
    m = (tile // n_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = (tile % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = m < rows
    b = m // (H_OUT * H_OUT)
    r = m % (H_OUT * H_OUT)
    ch = (r // H_OUT) * (1 + POOL)  # top-left conv output position of the (pooled) row
    cw = (r % H_OUT) * (1 + POOL)
    kk = tl.arange(0, BLOCK_K)
    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K_PAD, BLOCK_K):
        k = k0 + kk
        w = tl.load(w_ptr + k[:, None] * N_PAD + n[None, :])
        acc0 += tl.dot(_input_tile(in_ptr, b, ch, cw, m_ok, k, C_IN, H_IN, KSIZE, PAD, INPUT_NCHW), w)
        if POOL:
            acc1 += tl.dot(_input_tile(in_ptr, b, ch, cw + 1, m_ok, k, C_IN, H_IN, KSIZE, PAD, INPUT_NCHW), w)
            acc2 += tl.dot(_input_tile(in_ptr, b, ch + 1, cw, m_ok, k, C_IN, H_IN, KSIZE, PAD, INPUT_NCHW), w)
            acc3 += tl.dot(_input_tile(in_ptr, b, ch + 1, cw + 1, m_ok, k, C_IN, H_IN, KSIZE, PAD, INPUT_NCHW), w)
    best = acc0
    if POOL:
        best = tl.maximum(tl.maximum(acc0, acc1), tl.maximum(acc2, acc3))
    y = _gelu(best + tl.load(b_ptr + n)[None, :])
    out_ok = m_ok[:, None] & (n < C_OUT)[None, :]
    out_addr = m[:, None] * C_OUT + n[None, :]
    if RESIDUAL:
        y += tl.load(skip_ptr + out_addr, mask=out_ok, other=0.0, cache_modifier=".cg").to(tl.float32)
    tl.store(out_ptr + out_addr, y.to(tl.float16), mask=out_ok)


@triton.jit
def head_tile(act_ptr, head_ptr, out_ptr, batch, C: tl.constexpr, POSITIONS: tl.constexpr,
              CLASSES: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr):
    """Logits: max over the last map's positions, times the FP16 head, averaged over the batch rows."""
    c = tl.arange(0, BLOCK_C)
    pos = tl.arange(0, BLOCK_P)
    j = tl.arange(0, BLOCK_J)
    w = tl.load(head_ptr + c[:, None] * BLOCK_J + j[None, :]).to(tl.float32)
    total = tl.zeros((BLOCK_J,), dtype=tl.float32)
    bi = 0
    while bi < batch:  # not range(batch): see the module docstring
        ok = (pos < POSITIONS)[:, None] & (c < C)[None, :]
        a = tl.load(act_ptr + (bi * POSITIONS + pos[:, None]) * C + c[None, :], mask=ok, other=float("-inf"),
                    cache_modifier=".cg")
        feat = tl.max(a.to(tl.float32), axis=0)
        feat = tl.where(c < C, feat, 0.0)
        total += tl.sum(feat[:, None] * w, axis=0)
        bi += 1
    tl.store(out_ptr + j, total / batch, mask=j < CLASSES)


@triton.jit
def grid_barrier(sync_ptr, pid, nprog):
    """Wait until every program of the grid has arrived (all must be resident: grid <= SMs).

    One int32 counter, never reset: program 0 adds 2^31 - (nprog - 1), the others 1, so the counter's
    top bit flips exactly when the last program arrives and its low bits return to their old value.
    Each program spins until the top bit differs from the value it saw on arrival. This holds across
    any number of barriers, calls and CUDA-graph replays (as long as no call is killed midway)."""
    if nprog > 1:
        tl.debug_barrier()  # this program's stores are all issued before its release below
        inc = tl.where(pid == 0, (2147483647 - nprog) + 2, 1)
        old = tl.atomic_add(sync_ptr, inc, sem="release")  # gpu scope, the default
        cur = tl.atomic_add(sync_ptr, 0, sem="acquire")
        while (cur ^ old) >= 0:  # same top bit: not everyone is here yet
            cur = tl.atomic_add(sync_ptr, 0, sem="acquire")
        tl.debug_barrier()

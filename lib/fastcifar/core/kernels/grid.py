"""The megakernel for wide FastNets (F2): one launch over every SM, one CTA each (grid.cu).

The one-cluster kernel (megakernel.py) keeps every weight in the shared memory of 8 or 16 SMs; F2's
21 MB of FP16 weights do not fit there. This kernel spreads each layer over the whole GPU instead:
- A layer is cut into tiles (image, band of R output rows, BN output channels), at most one per
  CTA where the layer allows it (`plan`); each CTA copies its band's input rows from global memory
  (the L2 keeps the activations and, between calls, the weights) and runs the implicit GEMM on the
  tensor cores, with pooling, bias, GELU and the residual in the epilogue, as megakernel.cu does.
- Layers hand off through per-layer ready counters in global memory: a CTA adds 1 (release) when
  its tiles are stored and waits (acquire) until all G CTAs counted the previous layer. No split-K:
  a tile's K loop stays in one CTA, split across its warps only.
- Before that wait, each CTA asks the copy engine for its next tile's weights (a per-tile slice,
  one bulk copy), so the transfer overlaps the wait.
- The last layer's CTAs write partial logits; the last CTA to count adds them up in a fixed order
  (identical logits from call to call) and resets the counters for the next launch.
All G CTAs must be resident at once (a CTA waits for the others), so the launch is cooperative: the
driver refuses it rather than hang when they cannot be.

Compiled with NVRTC and launched through the driver API on torch's current stream, as megakernel.py
(whose compile and output helpers it uses); the arithmetic is that of `reference.reference`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .megakernel import (COMMON, SHARED_LIMIT, MegakernelError, compile_cubin, driver_check, function_resources,
                         hopper_arch, kernel_args, launch_config, launch_on_stream, load_function, output_buffers,
                         padded_stride, round_up)
from .pack import PackedNet

SOURCE = Path(__file__).with_name("grid.cu")
THREADS = 256
WARPS = THREADS // 32
BN_CHOICES = (8, 16, 32)  # output channels per tile
MAX_MT = 8  # m16 tiles of output positions per tile
# The tile cost model used to choose (BN, R) per layer, in ns for one CTA: bytes from L2 at about
# 100 B/ns per SM (the weights, asked for before the wait, count a third), shared-memory reads of
# the MMA operands at 128 B per clock (1.8 GHz).
L2_BYTES_PER_NS = 100.0
SMEM_BYTES_PER_NS = 128 * 1.8
PREFETCHED_SHARE = 1 / 3


@dataclass(frozen=True)
class GridLayer:
    """One 3x3 convolution (+ pool, bias, GELU, residual) and its tiles. Offsets ending in _goff are
    bytes into the weights (W_GOFF) or the work buffer (IN, OUT, SKIP); strides are in halves."""

    index: int
    cin: int  # padded to 16
    cout: int
    h_in: int
    in_wp: int
    in_s: int
    in_img: int
    in_goff: int
    h_out: int
    pool: bool
    skip: bool
    skip_goff: int
    last: bool
    first: bool
    r: int
    nbands: int
    bn: int
    nblocks: int
    tiles: int
    mt: int
    ks: int
    kc: int
    wrow: int
    w_bytes: int
    w_goff: int
    out_goff: int
    out_wp: int
    out_s: int
    out_img: int
    a_rows: int
    order: tuple = ()  # band position (row * h_out + column) of each MMA row, NONE past them (position_order)
    a_off: int = 0  # shared memory of this layer: weights at 0, then the band (A), the partial sums (RED),
    red_off: int = 0  # and for the last layer the values kept for the maxima (FEAT)
    feat_off: int = 0

    @property
    def nb8(self) -> int:
        return self.bn // 8

    @property
    def subs(self) -> int:
        return 4 if self.pool else 1

    def a_bytes(self) -> int:
        return self.a_rows * self.in_wp * self.in_s * 2

    def red_bytes(self) -> int:
        return self.mt * self.ks * self.subs * self.nb8 * 4 * 32 * 4


@dataclass
class GridPlan:
    grid: int
    threads: int
    batch: int
    timing: bool
    c0: int
    h0: int
    classes: int
    layers: list[GridLayer]
    l0_goff: int
    head_goff: int
    weight_bytes: int
    counters_goff: int
    partials_goff: int
    work_bytes: int
    img_off: int
    l0s_off: int
    mbar_off: int
    shared_bytes: int
    band_bulk: bool = True  # input bands by the copy engine (else by the threads' loads)
    reorder: bool = True  # MMA rows ordered for conflict-free shared-memory loads (position_order)
    k_unroll: int = 4  # unrolling of the MMA loop over K (4 against 2: outputs/megakernel_dev/grid)

    @property
    def nstamps(self) -> int:
        return 5 * len(self.layers) + 2

    def stamp_names(self) -> list[str]:
        """Per layer: its inputs complete (the counter), its band in shared memory, its weights there
        (asked for before the wait), its products summed, its outputs stored; the slowest CTA each."""
        names = ["start"]
        for c in self.layers:
            names += [f"conv{c.index} {step}" for step in ("inputs ready", "band in", "weights in", "computed",
                                                           "stored")]
        return names + ["logits done"]


def _choose_tiles(h_out: int, cout: int, pool: bool, last: bool, batch: int, grid: int, cin: int, in_wp: int,
                  in_s: int, budget: int, only: tuple[int, int] | None = None):
    """(cost, r, nbands, bn, nblocks, tiles, mt, ks, kc, wrow, w_bytes, a_rows) of the cheapest tiling
    by the cost model above, or None when none fits `budget` bytes of shared memory."""
    best = None
    kc = 9 * cin // 16
    wrow = padded_stride(9 * cin)
    subs = 4 if pool else 1
    for bn in BN_CHOICES:
        if bn > round_up(cout, 8) or subs * bn // 8 > 8:
            continue
        nblocks = -(-cout // bn)
        w_bytes = round_up(bn * wrow * 2 + bn * 4, 16)
        for r in range(1, h_out + 1):
            if last and r != h_out:  # the maxima over positions stay in one tile
                continue
            if only is not None and (r, bn) != tuple(only):
                continue
            nbands = -(-h_out // r)
            mt = -(-r * h_out // 16)
            tiles = batch * nbands * nblocks
            if mt > MAX_MT:
                continue
            ks = max(1, min(WARPS // mt, kc // 2)) if mt < WARPS else 1
            a_rows = min(2 * r + 2 if pool else r + 2, in_wp)
            a_bytes = a_rows * in_wp * in_s * 2
            red = mt * ks * subs * (bn // 8) * 512
            if w_bytes + a_bytes + red > budget:
                continue
            rounds = -(-tiles // grid)
            smem_reads = mt * kc * (subs * 512 + (bn // 8) * 256)
            cost = rounds * ((a_bytes + PREFETCHED_SHARE * w_bytes) / L2_BYTES_PER_NS + smem_reads / SMEM_BYTES_PER_NS)
            key = (cost, tiles)
            if best is None or key < best[0]:
                best = (key, (cost, r, nbands, bn, nblocks, tiles, mt, ks, kc, wrow, w_bytes, a_rows))
    return None if best is None else best[1]


def plan(packed: PackedNet, grid: int = 132, timing: bool = False, band_bulk: bool = True,
         fixed: dict[int, tuple[int, int]] | None = None, reorder: bool = True) -> GridPlan:
    """Tiles and memory layout of a packed FastNet over `grid` CTAs (one per SM). `fixed` may fix
    (rows per band, channels per tile) for some convolutions (by index, 1 = first); the others take
    the cheapest by the cost model. `reorder` orders each tile's MMA rows for the shared-memory banks
    (position_order; otherwise scan order). Raises ValueError with the reason for networks this kernel
    does not run."""
    layers = packed.layers
    whiten, convs = layers[0], layers[1:]
    if whiten.ksize != 2 or whiten.c_in != 3 or whiten.h_in != 32:
        raise ValueError("the grid megakernel expects FastNet's 2x2 whitening conv on a 32x32x3 image")
    if not convs or not convs[0].pool:
        raise ValueError("the grid megakernel expects a pooled first convolution")
    if grid < 1:
        raise ValueError(f"grid must be at least 1 CTA, not {grid}")
    batch, c0, h0, classes = packed.batch, whiten.c_out, whiten.h_out, packed.num_classes
    kept = 3 * 32 * 32 * 2 + round_up(c0 * 13 * 4, 128) + 128 + 1024  # image, layer 0, barriers, static
    budget = SHARED_LIMIT - kept
    wbytes = round_up(c0 * 13 * 4, 128)
    work = 0
    raw = []
    in_wp, in_s = h0 + 2, padded_stride(round_up(convs[0].c_in, 16))
    in_goff = -1  # the first layer reads the whitening rows it computes
    outputs = {}
    for i, layer in enumerate(convs):
        if layer.ksize != 3 or layer.pad != 1:
            raise ValueError("the grid megakernel runs 3x3 convolutions with padding 1 after the whitening")
        cin = round_up(layer.c_in, 16)
        if i > 0 and layer.c_in % 16:
            raise ValueError(f"widths must be multiples of 16 for the megakernel, got {layer.c_in}")
        last = i == len(convs) - 1
        choice = _choose_tiles(layer.h_out, layer.c_out, layer.pool, last, batch, grid, cin, in_wp, in_s, budget,
                               (fixed or {}).get(i + 1))
        if choice is None:
            raise ValueError(f"conv{i + 1} ({layer.c_in} -> {layer.c_out} channels, {layer.h_in}x{layer.h_in}) "
                             f"has no tile that fits {budget // 1024} KB of shared memory")
        _, r, nbands, bn, nblocks, tiles, mt, ks, kc, wrow, w_bytes, a_rows = choice
        w_goff = wbytes
        wbytes += round_up(nblocks * w_bytes, 128)
        out_wp, out_s = layer.h_out + 2, padded_stride(layer.c_out)
        out_img = out_wp * out_wp * out_s
        out_goff = 0
        if not last:
            out_goff = work
            work += round_up(batch * out_img * 2, 128)
            outputs[i + 1] = (out_goff, layer.h_out, layer.c_out)
        skip_goff = 0
        if layer.skip is not None:
            src_goff, src_h, src_c = outputs[layer.skip]
            if (src_h, src_c) != (layer.h_out, layer.c_out):
                raise ValueError("a residual must have its layer's shape")
            skip_goff = src_goff
        if not last and layer.c_out % 8:
            raise ValueError(f"conv{i + 1}'s {layer.c_out} channels: the grid megakernel stores 8 channels at a time")
        raw.append(GridLayer(index=i + 1, cin=cin, cout=layer.c_out, h_in=layer.h_in, in_wp=in_wp, in_s=in_s,
                             in_img=in_wp * in_wp * in_s, in_goff=max(in_goff, 0), h_out=layer.h_out, pool=layer.pool,
                             skip=layer.skip is not None, skip_goff=skip_goff, last=last, first=i == 0, r=r,
                             nbands=nbands, bn=bn, nblocks=nblocks, tiles=tiles, mt=mt, ks=ks, kc=kc, wrow=wrow,
                             w_bytes=w_bytes, w_goff=w_goff, out_goff=out_goff, out_wp=out_wp, out_s=out_s,
                             out_img=out_img, a_rows=a_rows))
        in_wp, in_s, in_goff = out_wp, out_s, out_goff
    head_goff = wbytes
    wbytes += round_up(convs[-1].c_out * classes * 2, 128)
    counters_goff = work
    work += 128
    partials_goff = work
    work += round_up(batch * raw[-1].nblocks * classes * 4, 128)
    # shared memory: per layer W | A | RED (| FEAT), reused from layer to layer; then image | layer 0 | barrier
    placed, top = [], 0
    for l in raw:
        a_off = round_up(l.w_bytes, 128)
        red_off = a_off + round_up(l.a_bytes(), 128)
        feat_off = red_off + round_up(l.red_bytes(), 128)
        end = feat_off + (round_up((l.mt * 16 + 1) * l.bn * 4, 128) if l.last else 0)
        placed.append(replace(l, a_off=a_off, red_off=red_off, feat_off=feat_off,
                              order=position_order(l) if reorder else tuple(range(l.r * l.h_out))))
        top = max(top, end, classes * 4)
    raw = placed
    img_off = round_up(top, 128)
    l0s_off = img_off + 3 * 32 * 32 * 2
    mbar_off = l0s_off + round_up(c0 * 13 * 4, 128)
    shared = mbar_off + 128
    if shared + 1024 > SHARED_LIMIT:
        raise ValueError(f"the grid megakernel needs {shared / 1024:.0f} KB of shared memory per CTA, over "
                         f"{SHARED_LIMIT // 1024} KB")
    return GridPlan(grid, THREADS, batch, timing, c0, h0, classes, raw, 0, head_goff, wbytes, counters_goff,
                    partials_goff, work, img_off, l0s_off, mbar_off, shared, band_bulk=band_bulk, reorder=reorder)


NONE = 0xFFFF  # an MMA row with no position (ORDERS)


def bank_group(layer: GridLayer, position: int) -> int:
    """Which 16-byte bank group (of 8) a band position's first channels fall in: the rows of one MMA
    fragment load 16 bytes each, in one pass when their groups differ. Pooled layers read their
    position's top-left conv position; the taps and the other sub-positions shift every row alike."""
    oy, ox = divmod(position, layer.h_out)
    cy, cx = (2 * oy, 2 * ox) if layer.pool else (oy, ox)
    return ((cy * layer.in_wp + cx) * (layer.in_s // 8)) % 8


def position_order(layer: GridLayer) -> tuple:
    """The band position each of the tile's MT x 16 MMA rows computes: each group of 8 rows (one
    fragment load) takes, in scan order, positions from distinct bank groups; what is left fills the
    free rows. Positions past a shorter last band are simply not computed there."""
    left = list(range(layer.r * layer.h_out))
    groups = []
    for _ in range(2 * layer.mt):
        taken, used = [], set()
        for position in left:
            if len(taken) < 8 and bank_group(layer, position) not in used:
                taken.append(position)
                used.add(bank_group(layer, position))
        left = [p for p in left if p not in taken]
        groups.append(taken)
    for group in groups:
        while len(group) < 8 and left:
            group.append(left.pop(0))
    return tuple(p for group in groups for p in group + [NONE] * (8 - len(group)))


def load_passes(layer: GridLayer, order: tuple) -> int:
    """Shared-memory passes of one K step's A loads in `layer` for MMA rows in `order`, summed over
    fragment loads and bands, as grid.cu's compute() makes them (rows past the band read the first
    valid row of their group)."""
    total = 0
    for rows_here in {min(layer.r, layer.h_out - y0) for y0 in range(0, layer.h_out, layer.r)}:
        for k in range(0, layer.mt * 16, 8):
            group = [p for p in order[k:k + 8] if p != NONE and p // layer.h_out < rows_here] or [0]
            for s in range(layer.subs):
                sy, sx = s >> 1, s & 1
                words = {}
                for p in group:
                    oy, ox = divmod(p, layer.h_out)
                    cy, cx = (2 * oy + sy, 2 * ox + sx) if layer.pool else (oy, ox)
                    start = (cy * layer.in_wp + cx) * layer.in_s // 2
                    for t in range(4):
                        words.setdefault((start + t) % 32, set()).add(start + t)
                total += max(len(w) for w in words.values())
    return total


def tiles_of(p: GridPlan, layer: GridLayer) -> dict[int, list[tuple[int, int, int]]]:
    """The (image, first output row, channel block) tiles each CTA computes, by the kernel's formulas."""
    out: dict[int, list[tuple[int, int, int]]] = {}
    for tile in range(layer.tiles):
        nblk, rest = tile % layer.nblocks, tile // layer.nblocks
        out.setdefault(tile % p.grid, []).append((rest // layer.nbands, (rest % layer.nbands) * layer.r, nblk))
    return out


# ---------------------------------------------------------------- weights

def pack_weights(packed: PackedNet, p: GridPlan) -> torch.Tensor:
    """The kernel's weights as one uint8 buffer on the packed net's device: the whitening layer
    (FP32 [C0][12], k = c * 4 + dy * 2 + dx, then the C0 biases), each layer's per-tile slices
    (BN rows of K = 9 x CIN FP16 weights, k = tap * CIN + c, stride WROW, then BN FP32 biases), the
    FP16 head [features][classes]."""
    blob = np.zeros(p.weight_bytes, dtype=np.uint8)
    whiten = packed.layers[0]
    w0 = whiten.weight[: whiten.k, : p.c0].float().cpu().reshape(2, 2, 3, p.c0).permute(3, 2, 0, 1)
    l0 = np.concatenate([w0.reshape(p.c0, 12).numpy().ravel(), whiten.bias[: p.c0].float().cpu().numpy()])
    blob[p.l0_goff: p.l0_goff + l0.nbytes] = l0.astype(np.float32).view(np.uint8)
    for gl, layer in zip(p.layers, packed.layers[1:]):
        w = layer.weight[: layer.k, : layer.c_out].cpu().reshape(9, layer.c_in, layer.c_out)
        full = torch.zeros(gl.nblocks * gl.bn, gl.wrow, dtype=torch.float16)
        wt = torch.zeros(9, gl.cin, layer.c_out, dtype=torch.float16)
        wt[:, : layer.c_in] = w
        full[: layer.c_out, : 9 * gl.cin] = wt.reshape(9 * gl.cin, layer.c_out).t()
        bias = torch.zeros(gl.nblocks * gl.bn, dtype=torch.float32)
        bias[: layer.c_out] = layer.bias[: layer.c_out].float().cpu()
        for j in range(gl.nblocks):
            at = gl.w_goff + j * gl.w_bytes
            wb = full[j * gl.bn:(j + 1) * gl.bn].contiguous().numpy().view(np.uint8).ravel()
            bb = bias[j * gl.bn:(j + 1) * gl.bn].contiguous().numpy().view(np.uint8).ravel()
            blob[at: at + wb.size] = wb
            blob[at + wb.size: at + wb.size + bb.size] = bb
    head = packed.head[: packed.features, : p.classes].cpu().contiguous().numpy().view(np.uint8).ravel()
    blob[p.head_goff: p.head_goff + head.size] = head
    return torch.from_numpy(blob).to(packed.head.device)


# ---------------------------------------------------------------- source

_FIELDS = ("index", "cin", "cout", "h_in", "in_wp", "in_s", "in_img", "in_goff", "h_out", "pool", "skip", "skip_goff",
           "last", "first", "r", "nbands", "bn", "nb8", "nblocks", "tiles", "mt", "ks", "kc", "wrow", "w_bytes", "w_goff",
           "out_goff", "out_wp", "out_s", "out_img", "a_rows", "a_off", "red_off", "feat_off")


def source(p: GridPlan) -> str:
    """The kernel's full CUDA C++ text: generated constants, common.cu, grid.cu, the layer sequence."""
    g = [f"// generated for {len(p.layers)} convolutions, batch {p.batch}, grid {p.grid}",
         f"constexpr int G = {p.grid}, THREADS = {p.threads}, WARPS = {p.threads // 32}, BATCH = {p.batch};",
         f"constexpr int BAND_BULK = {int(p.band_bulk)}, KUNROLL = {p.k_unroll}, TIMING = {int(p.timing)};",
         f"constexpr int NSTAMPS = {p.nstamps}, NCONV = {len(p.layers)};",
         f"constexpr int CLASSES = {p.classes}, C0 = {p.c0}, H0 = {p.h0}, HEAD_PARTS = {p.layers[-1].nblocks};",
         f"constexpr int L0_GOFF = {p.l0_goff}, HEAD_GOFF = {p.head_goff}, COUNTERS_GOFF = {p.counters_goff}, "
         f"PARTIALS_GOFF = {p.partials_goff};",
         f"constexpr int IMG_OFF = {p.img_off}, IMG_BYTES = {3 * 32 * 32 * 2}, L0S_OFF = {p.l0s_off}, MBAR_OFF = {p.mbar_off};"]
    width = max(l.mt * 16 for l in p.layers)
    rows = [list(l.order) + [NONE] * (width - len(l.order)) for l in p.layers]
    g.append(f"__constant__ unsigned short ORDERS[{len(p.layers)}][{width}] = {{"
             + ", ".join("{" + ", ".join(map(str, r)) + "}" for r in rows) + "};")
    for c in p.layers:
        names = {"h_out": "HOUT", "h_in": "HIN"}
        values = ", ".join(f"{names.get(f, f.upper())} = {int(getattr(c, f))}" for f in _FIELDS)
        g.append(f"struct L{c.index} {{ static constexpr int {values}; }};")
    steps = "\n".join(f"  layer<L{c.index}>(smem, weights, work, stamps, phase, band_phase);" for c in p.layers)
    footer = ("\nDEV void run_layers(unsigned char* smem, const unsigned char* weights, unsigned char* work, "
              "long long* stamps) {\n  u32 phase = 0, band_phase = 0;\n" + steps + "\n}\n")
    return "\n".join(g) + "\n\n" + COMMON.read_text() + "\n" + SOURCE.read_text() + footer


# ---------------------------------------------------------------- compile and launch

@dataclass
class GridKernel:
    """A compiled grid megakernel bound to its weights, work buffer and outputs (see `build_kernel`)."""

    plan: GridPlan
    weights: torch.Tensor
    work: torch.Tensor
    logits: torch.Tensor
    top_class: torch.Tensor
    stamps: torch.Tensor | None
    function: object
    module: object
    resources: dict
    compile_s: float
    _args: list = field(default_factory=list, repr=False)
    _config: object = field(default=None, repr=False)

    kernels_per_call = 1

    def launch(self, image: torch.Tensor) -> torch.Tensor:
        """One launch on torch's current stream; returns the logits buffer (overwritten by the next
        launch). Allocates nothing and never synchronises, so a CUDA graph can capture it."""
        launch_on_stream(self._config, self.function, self._args, image, self.weights.device)
        return self.logits


def build_kernel(packed: PackedNet, timing: bool = False, outputs=None, grid: int | None = None,
                 band_bulk: bool = True, fixed: dict[int, tuple[int, int]] | None = None,
                 reorder: bool = True) -> GridKernel:
    """Plan, pack, compile (NVRTC) and load the grid megakernel for a packed FastNet on its CUDA device,
    one CTA per SM unless `grid` says otherwise."""
    from cuda.bindings import driver

    device = packed.head.device
    arch = hopper_arch(device, "bulk copies")
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    p = plan(packed, grid or sms, timing, band_bulk, fixed, reorder)
    t0 = time.perf_counter()
    cubin, log = compile_cubin(source(p), arch)
    torch.cuda.current_stream(device)
    module, function = load_function(cubin, b"fastnet_grid", p.shared_bytes)
    per_sm = driver_check(driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(function, p.threads, p.shared_bytes),
                          "cuOccupancyMaxActiveBlocksPerMultiprocessor")
    if per_sm * sms < p.grid:
        raise MegakernelError(f"{p.grid} CTAs of {p.shared_bytes // 1024} KB shared memory cannot all be resident "
                              f"on {sms} SMs ({per_sm} per SM); the grid megakernel needs them at once")
    coop = driver.CUlaunchAttribute()
    coop.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_COOPERATIVE
    coop.value.cooperative = 1
    config = launch_config(p.grid, p.threads, p.shared_bytes, coop)
    compile_s = time.perf_counter() - t0
    resources = {**function_resources(function, log), "shared_bytes": p.shared_bytes, "grid": p.grid,
                 "threads": p.threads}
    weights = pack_weights(packed, p)
    work = torch.zeros(p.work_bytes, dtype=torch.uint8, device=device)  # borders and counters start at zero
    logits, top = output_buffers(outputs, p.classes, device)
    stamps = torch.zeros(p.grid, p.nstamps, dtype=torch.int64, device=device) if timing else None
    args = kernel_args(0, weights.data_ptr(), work.data_ptr(), logits.data_ptr(), top.data_ptr(),
                       stamps.data_ptr() if stamps is not None else 0)
    return GridKernel(p, weights, work, logits, top, stamps, function, module, resources, compile_s, args, config)


def notes(kernel: GridKernel) -> list[str]:
    p, r = kernel.plan, kernel.resources
    tiling = ", ".join(f"conv{l.index} {l.tiles}x(R{l.r} BN{l.bn})" for l in p.layers)
    return [f"megakernel (grid): 1 kernel launch per call, {p.grid} CTAs (one per SM) x {p.threads} threads, "
            "per-layer ready counters",
            f"NVRTC compile + load {kernel.compile_s:.2f} s",
            f"{r['registers']} registers per thread, {r['local_bytes']} bytes local memory (spills), "
            f"{r['shared_bytes'] / 1024:.1f} KB shared memory per CTA; weights {p.weight_bytes / 2**20:.1f} MB in L2",
            f"tiles: {tiling}"]


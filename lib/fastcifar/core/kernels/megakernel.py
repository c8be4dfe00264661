"""Backend "megakernel": a whole FastNet (mirror included) in one CUDA C++ kernel launch.

One thread-block cluster of `cluster` CTAs (16 by default, the largest, non-portable size; or 8) runs
every layer:
- At kernel start each CTA asks the copy engine for its share of every layer's weights (one bulk copy
  and one mbarrier per layer, in the order the layers need them, the image first), so the first
  layers start before the last weights arrive.
- Each CTA computes the whitening layer (tensor cores, K = 12) for the rows its first convolution
  reads; every convolution is then an implicit GEMM on the tensor cores (mma m16n8k16, FP16 in, FP32
  accumulate) over activations held in shared memory, its pooling, bias, GELU and residual in the
  epilogue.
- Each CTA sends its output channels into every CTA's shared memory with asynchronous stores that
  count down the receiver's mbarrier: a layer starts when its inputs have arrived, with no cluster-wide
  barrier or GPU-wide fence between layers. The last layer's per-image maxima go to CTA 0, which runs
  the head.
The plan (`make_plan`) says how each layer is split (rows of output positions x output channels x
the K loop) and lays out each CTA's shared memory; a network that does not fit says so with sizes.

Why NVRTC through cuda-python's `cuda.bindings`: the kernel's shape (widths, tiling, shared-memory
offsets) is generated per network and compiled when the variant is built, in about a second and
without a CUDA toolkit on the machine (torch's CUDA wheels already bring cuda-bindings and NVRTC);
the driver API gives what a cluster launch needs (the non-portable cluster size, dynamic shared
memory above 48 KB, cuLaunchKernelEx with a cluster dimension) and launches on torch's current
stream, so the call can be captured in a CUDA graph like every other variant. A C++ extension
(torch.utils.cpp_extension) would compile for a minute against torch's headers at every build.

Files: megakernel.cu (device code, no includes; common.cu its helpers shared with grid.cu), this module
(plan, packing, source, launch).
The arithmetic is that of `reference.reference` on the same packed weights (FP16 weights and stored
activations, FP32 accumulation and epilogue); only the order of FP32 additions differs.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .pack import PackedNet

SOURCE = Path(__file__).with_name("megakernel.cu")
COMMON = Path(__file__).with_name("common.cu")  # helpers shared with grid.cu, placed first
CLUSTER_SIZES = (8, 16)
DEFAULT_CLUSTER = 16
THREADS = 256  # per CTA; THREAD_CHOICES are what the kernel is written for
THREAD_CHOICES = (256, 512)
# Channel groups of the first convolution (see _tiling). 1 is fastest on F1's shape since the whitening
# moved to the tensor cores: 14.7 against 15.6 us inside the kernel for 2 (outputs/megakernel_dev/whitening).
BAND_GROUPS = 1
SHARED_LIMIT = 227 * 1024  # opt-in shared memory per block on sm_90 (H100, H200)
INPUT_KINDS = ("fp16", "uint8")  # normalised FP16 NCHW, or raw HWC bytes (normalisation folded in)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_stride(n: int) -> int:
    """Halves between two rows of n FP16 values in shared memory: at least n, even, and a word count
    of 4 mod 8, so that the 8 rows a warp's MMA fragment loads (4 words each) hit 32 distinct banks."""
    words = -(-n // 2)
    while words % 8 != 4:
        words += 1
    return 2 * words


@dataclass(frozen=True)
class ConvPlan:
    """One 3x3 convolution (+ pool, bias, GELU, skip) of the network and how the cluster splits it.

    Rows of its GEMM are output positions, tiled as `rpt` whole rows of one image (16 positions at
    most); `mt` tiles in all. Columns (output channels, in tiles of 8) are split over `ng` groups of
    CTAs (`nper` n8 tiles each); the cluster's CTAs are `ng` x (cluster / ng) parts of the rows.
    Each CTA's work items (tile, block of `nb` n8 tiles, K split) go to its warps; `ks` > 1 splits
    the K loop of `kc` 16-wide chunks across warps. Offsets are bytes into shared memory; strides
    (`in_s`, `out_s`, `wrow`) are in halves."""

    index: int
    cin: int  # input channels, padded to a multiple of 16
    cout: int
    h_out: int
    pool: bool
    skip: bool
    last: bool
    rpt: int
    tpi: int
    mt: int
    ng: int
    nper: int
    nb: int
    kc: int
    ks: int
    in_band: bool
    in_off: int
    in_s: int
    in_wp: int
    in_img: int
    band_rows: int
    out_off: int
    out_s: int
    out_wp: int
    out_pad: int
    out_img: int
    skip_off: int  # the residual's source (a skip layer reads it before writing in place, or last)
    skip_s: int
    skip_wp: int
    skip_img: int
    w_off: int
    wrow: int
    bias_off: int

    @property
    def nblk(self) -> int:
        return self.nper // self.nb

    @property
    def subs(self) -> int:
        return 4 if self.pool else 1


@dataclass
class Plan:
    cluster: int
    threads: int
    batch: int
    input_kind: str
    timing: bool
    c0: int  # whitening channels
    h0: int  # whitening output size (31)
    classes: int
    feat_c: int
    convs: list[ConvPlan]
    sections: list[tuple[int, int]]  # (start, end) byte ranges of the per-CTA weight image, in load order
    blob_bytes: int
    img_off: int
    img_bytes: int
    feat_off: int
    featbuf_off: int
    mbar_off: int
    red_off: int
    head_off: int
    shared_bytes: int
    layer_bytes: list[int]
    act_bytes: tuple[int, int] = (0, 0)
    band_bytes: int = 0
    red_bytes: int = 0

    @property
    def nstamps(self) -> int:
        return 2 * len(self.convs) + 4

    def stamp_names(self) -> list[str]:
        names = ["start", "image and layer 0 in", "whitening done, conv1 weights in"]
        for c in self.convs:
            names += [f"conv{c.index} pushed", f"conv{c.index} outputs in" if c.index < len(self.convs)
                      else "partial logits in CTA 0"]
        return names + ["head done"]


def _tiling(h_out: int, cout: int, batch: int, cluster: int, cin: int, band_groups: int | None, warps: int):
    if h_out > 16:
        raise ValueError(f"an output row of {h_out} positions does not fit one 16-row MMA tile")
    rpt = min(h_out, max(1, 16 // h_out))
    tpi = -(-h_out // rpt)
    mt = batch * tpi
    n8 = -(-cout // 8)
    # Output channels split as finely as the n8 tiles allow: the least weight bytes per CTA to load
    # (the copy engine brings about 10 KB per microsecond to one SM, so bytes cost time). The first
    # layer, whose CTAs also compute the whitening rows they read, splits its channels in
    # `band_groups` (more groups: fewer weight bytes before the first layer, but each band of whitening
    # rows computed by that many CTAs, and more bands per CTA).
    # Either way the mirror doubles the tiles per CTA, not the weights per CTA.
    ng = min(n8, cluster) if band_groups is None else min(n8, band_groups, cluster)
    nper = -(-n8 // ng)
    nb = 2 if nper % 2 == 0 else 1
    mparts = cluster // ng
    tpc = -(-mt // mparts)
    kc = 9 * cin // 16
    nblk = nper // nb
    ks_max = 1  # K splits: only when each warp then has at most one item
    if 2 * tpc * nblk <= warps:
        ks_max = max(1, min(warps // (tpc * nblk), kc // 2))
    # (a warp may take several items when there are more items than warps)
    return rpt, tpi, mt, ng, nper, nb, kc, ks_max, tpc


def _red_bytes(tpc: int, nblk: int, ks: int, subs: int, nb: int) -> int:
    """Shared memory for every item's accumulators (FP32, one slot per lane), read by `finish`."""
    return tpc * nblk * ks * subs * nb * 4 * 32 * 4


class DoesNotFit(ValueError):
    """The network needs more shared memory per CTA than the GPU has (the message gives the sizes)."""


def make_plan(packed: PackedNet, cluster: int = DEFAULT_CLUSTER, input_kind: str = "fp16",
              timing: bool = False, threads: int = THREADS, band_groups: int = BAND_GROUPS) -> Plan:
    """Tiling and shared-memory layout of a packed FastNet on one cluster. Where `band_groups` channel
    groups for the first convolution do not fit (one group holds all of its weights; more groups hold
    more whitening rows), 2 and then 1 are tried. Raises ValueError (DoesNotFit with the sizes of the
    last try) for networks this backend cannot run."""
    tries = list(dict.fromkeys((band_groups, 2, 1)))
    for groups in tries[:-1]:
        try:
            return _make_plan(packed, cluster, input_kind, timing, threads, groups)
        except DoesNotFit:
            continue
    return _make_plan(packed, cluster, input_kind, timing, threads, tries[-1])


def _make_plan(packed: PackedNet, cluster: int, input_kind: str, timing: bool, threads: int,
               band_groups: int) -> Plan:
    if cluster not in CLUSTER_SIZES:
        raise ValueError(f"cluster must be one of {CLUSTER_SIZES}, not {cluster}")
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, not {input_kind!r}")
    if threads not in THREAD_CHOICES:
        raise ValueError(f"threads must be one of {THREAD_CHOICES}, not {threads}")
    layers = packed.layers
    whiten, convs = layers[0], layers[1:]
    if whiten.ksize != 2 or whiten.c_in != 3 or whiten.h_in != 32:
        raise ValueError("the megakernel expects FastNet's 2x2 whitening conv on a 32x32x3 image")
    if not convs or not convs[0].pool:
        raise ValueError("the megakernel expects a pooled first convolution")
    batch = packed.batch
    c0, h0 = whiten.c_out, whiten.h_out
    sections: list[tuple[int, int]] = []
    offset = 0

    def section(nbytes: int) -> int:
        nonlocal offset
        start = offset
        offset += round_up(nbytes, 16)
        sections.append((start, offset))
        return start

    first_cin = round_up(convs[0].c_in, 16)
    if c0 > first_cin or c0 > 32:
        raise ValueError(f"the megakernel's whitening layer has at most 32 channels, not {c0}")
    l0_off = section(first_cin * 16 * 2 + first_cin * 4)
    assert l0_off == 0
    raw = []
    for i, layer in enumerate(convs):
        if layer.ksize != 3 or layer.pad != 1:
            raise ValueError("the megakernel runs 3x3 convolutions with padding 1 after the whitening")
        cin = round_up(layer.c_in, 16)
        if i > 0 and layer.c_in % 16:
            raise ValueError(f"widths must be multiples of 16 for the megakernel, got {layer.c_in}")
        rpt, tpi, mt, ng, nper, nb, kc, ks, tpc = _tiling(layer.h_out, layer.c_out, batch, cluster, cin,
                                                          band_groups if i == 0 else None, threads // 32)
        wrow = padded_stride(kc * 16)
        w_off = section(nper * 8 * wrow * 2 + nper * 8 * 4)
        raw.append(dict(index=i + 1, cin=cin, cout=layer.c_out, h_out=layer.h_out, pool=layer.pool,
                        skip=layer.skip is not None, last=i == len(convs) - 1, rpt=rpt, tpi=tpi, mt=mt, ng=ng,
                        nper=nper, nb=nb, kc=kc, ks=ks, tpc=tpc, w_off=w_off, wrow=wrow,
                        bias_off=w_off + nper * 8 * wrow * 2, skip_from=layer.skip))
    classes, feat_c = packed.num_classes, convs[-1].c_out
    head_off = section(feat_c * classes * 2)
    blob_bytes = offset

    # activation buffers: ping-pong, a residual layer writes into its skip source's buffer in place
    out_buf, sizes = [], [0, 0]
    for i, r in enumerate(raw):
        if r["last"]:
            out_buf.append(None)
            continue
        if r["skip"]:
            buf = out_buf[r["skip_from"] - 1]
        else:
            buf = 0 if i == 0 else 1 - out_buf[i - 1]
        out_buf.append(buf)
        out_pad = 1
        out_s = padded_stride(r["cout"])
        out_wp = r["h_out"] + 2 * out_pad
        r.update(out_pad=out_pad, out_s=out_s, out_wp=out_wp, out_img=out_wp * out_wp * out_s)
        sizes[buf] = max(sizes[buf], batch * r["out_img"] * 2)
    act_off = (blob_bytes, blob_bytes + round_up(sizes[0], 16))
    offset = act_off[1] + round_up(sizes[1], 16)
    band_off = offset
    first = raw[0]
    band_s, band_wp = padded_stride(first["cin"]), h0 + 2
    band_rows = 2 * first["rpt"] + 2
    band_bytes = first["tpc"] * band_rows * band_wp * band_s * 2
    offset += round_up(band_bytes, 16)
    img_off = offset
    img_bytes = 3 * 32 * 32 * (2 if input_kind == "fp16" else 1)
    offset += img_bytes
    last = raw[-1]
    feat_off = offset  # CTA 0 receives the partial logits: [image][channel group of the last layer][class]
    offset += round_up(batch * last["ng"] * classes * 4, 16)
    featbuf_off = offset  # the last layer's values per row, then its per-image maxima
    offset += round_up(last["tpc"] * 17 * last["nper"] * 8 * 4, 16)
    mbar_off = offset
    offset += round_up(8 * (len(sections) + len(raw)), 16)
    red_off = offset
    # K splits use what shared memory is left: fewer splits (idle warps) rather than no fit
    budget = SHARED_LIMIT - red_off
    red_bytes = classes * 4
    for r in raw:
        subs, nblk = (4 if r["pool"] else 1), r["nper"] // r["nb"]
        while r["ks"] > 1 and _red_bytes(r["tpc"], nblk, r["ks"], subs, r["nb"]) > budget:
            r["ks"] -= 1
        red_bytes = max(red_bytes, _red_bytes(r["tpc"], nblk, r["ks"], subs, r["nb"]))
    plans = []
    for i, r in enumerate(raw):
        if i == 0:
            r.update(in_band=True, in_off=band_off, in_s=band_s, in_wp=band_wp, in_img=0, band_rows=band_rows)
        else:
            p = raw[i - 1]
            r.update(in_band=False, in_off=act_off[out_buf[i - 1]], in_s=p["out_s"], in_wp=p["out_wp"],
                     in_img=p["out_img"], band_rows=0)
        if r["last"]:
            r.update(out_off=0, out_s=0, out_wp=0, out_pad=0, out_img=0)
        else:
            r["out_off"] = act_off[out_buf[i]]
        r.update(skip_off=0, skip_s=0, skip_wp=0, skip_img=0)
        if r["skip"]:
            src = raw[r["skip_from"] - 1]
            r.update(skip_off=act_off[out_buf[r["skip_from"] - 1]], skip_s=src["out_s"], skip_wp=src["out_wp"],
                     skip_img=src["out_img"])
        if r["in_s"] < r["cin"]:
            raise ValueError(f"conv{i + 1}: input stride {r['in_s']} below its {r['cin']} channels")
        if r["last"] and r["tpi"] != 1:
            raise ValueError("the last convolution's output must fit one tile per image (16 positions)")
        r.pop("tpc")
        r.pop("skip_from")
        plans.append(ConvPlan(**r))
    offset += round_up(red_bytes, 16)
    # what each convolution's outputs bring to a CTA: the whole map (FP16), or the partial logits to CTA 0
    layer_bytes = [batch * c.h_out * c.h_out * c.cout * 2 for c in plans[:-1]] + [batch * plans[-1].ng * classes * 4]
    plan = Plan(cluster, threads, batch, input_kind, timing, c0, h0, classes, feat_c, plans, sections, blob_bytes,
                img_off, img_bytes, feat_off, featbuf_off, mbar_off, red_off, head_off, offset, layer_bytes,
                (sizes[0], sizes[1]), band_bytes, red_bytes)
    if plan.shared_bytes > SHARED_LIMIT:
        raise DoesNotFit(
            f"this FastNet needs {plan.shared_bytes / 1024:.0f} KB of shared memory per CTA on a cluster of "
            f"{cluster} ({blob_bytes / 1024:.0f} KB of weights), over the {SHARED_LIMIT // 1024} KB a CTA has: "
            "the one-cluster megakernel is for small widths (F1); use a larger cluster or another backend")
    return plan


def cta_work(plan: Plan, conv: ConvPlan, rank: int) -> list[tuple[int, int]]:
    """The (row tile, n8 tile) pairs CTA `rank` computes for `conv`, by the kernel's own formulas
    (conv_layer, finish): channel group rank % ng, row part rank // ng, tiles part, part + parts, ..."""
    parts = plan.cluster // conv.ng
    group, part = rank % conv.ng, rank // conv.ng
    if part >= parts:
        return []
    tiles = range(part, conv.mt, parts)
    n8s = [group * conv.nper + k for k in range(conv.nper) if (group * conv.nper + k) * 8 < conv.cout]
    return [(tile, n8) for tile in tiles for n8 in n8s]


def regions(plan: Plan) -> dict[str, tuple[int, int]]:
    """Byte ranges [start, end) of the shared-memory regions of one CTA (for checks and reports)."""
    c1 = plan.convs[0]
    return {"weights": (0, plan.blob_bytes),
            "activations 0": (plan.blob_bytes, plan.blob_bytes + plan.act_bytes[0]),
            "activations 1": (plan.blob_bytes + round_up(plan.act_bytes[0], 16),
                              plan.blob_bytes + round_up(plan.act_bytes[0], 16) + plan.act_bytes[1]),
            "whitening band": (c1.in_off, c1.in_off + plan.band_bytes),
            "image": (plan.img_off, plan.img_off + plan.img_bytes),
            "partial logits": (plan.feat_off, plan.feat_off + plan.batch * plan.convs[-1].ng * plan.classes * 4),
            "last layer's maxima": (plan.featbuf_off, plan.mbar_off),
            "mbarriers": (plan.mbar_off, plan.mbar_off + 8 * (len(plan.sections) + len(plan.convs))),
            "partial sums": (plan.red_off, plan.red_off + plan.red_bytes)}


# ---------------------------------------------------------------- packing the weights per CTA

def _whitening_params(packed: PackedNet, cin: int, input_kind: str, mean, std) -> np.ndarray:
    """Layer 0 as the kernel's MMA reads it: FP16 weights [cin][16] (k = channel * 4 + dy * 2 + dx,
    rows past C0 and k >= 12 zero) then FP32 biases [cin], as bytes. The packed FP16 weights are used
    as they are, so FP16 input reproduces the reference's products exactly. For uint8 input the
    normalisation (x / 255 - mean) / std, affine per channel, is folded in (the conv has no padding)."""
    layer = packed.layers[0]
    c0 = layer.c_out
    w = layer.weight[: layer.k, : c0].float().cpu()  # rows k = (dy * 2 + dx) * 3 + c
    w = w.reshape(2, 2, 3, c0).permute(3, 2, 0, 1).contiguous()  # [C0][c][dy][dx]
    b = layer.bias[:c0].float().cpu().clone()
    if input_kind == "uint8":
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        b = b - (w * (mean_t / std_t)).sum(dim=(1, 2, 3))
        w = w / (255.0 * std_t)
    weights = torch.zeros(cin, 16, dtype=torch.float16)
    weights[:c0, :12] = w.reshape(c0, 12).half()
    biases = torch.zeros(cin, dtype=torch.float32)
    biases[:c0] = b
    return np.concatenate([weights.numpy().view(np.uint8).ravel(), biases.numpy().view(np.uint8).ravel()])


def pack_blob(packed: PackedNet, plan: Plan, mean=None, std=None) -> torch.Tensor:
    """The weights' shared-memory image of every CTA, (cluster, blob_bytes) uint8, on the packed
    net's device. CTA r holds, for each convolution, the output channels of its group r % ng."""
    if plan.input_kind == "uint8" and (mean is None or std is None):
        raise ValueError("uint8 input needs the dataset's per-channel mean and std to fold into layer 0")
    blob = np.zeros((plan.cluster, plan.blob_bytes), dtype=np.uint8)
    l0 = _whitening_params(packed, plan.convs[0].cin, plan.input_kind, mean, std)
    blob[:, : l0.size] = l0
    for conv, layer in zip(plan.convs, packed.layers[1:]):
        k_real = layer.k
        w = layer.weight[:k_real, : layer.c_out].cpu()  # rows k = tap * c_in + c
        w = w.reshape(9, layer.c_in, layer.c_out)
        full = torch.zeros(conv.nper * 8 * conv.ng, conv.wrow, dtype=torch.float16)
        wt = torch.zeros(9, conv.cin, layer.c_out, dtype=torch.float16)
        wt[:, : layer.c_in] = w
        full[: layer.c_out, : 9 * conv.cin] = wt.reshape(9 * conv.cin, layer.c_out).t()
        bias = torch.zeros(conv.nper * 8 * conv.ng, dtype=torch.float32)
        bias[: layer.c_out] = layer.bias[: layer.c_out].float().cpu()
        rows = conv.nper * 8
        for r in range(plan.cluster):
            g = r % conv.ng
            wb = full[g * rows:(g + 1) * rows].contiguous().numpy().view(np.uint8).ravel()
            bb = bias[g * rows:(g + 1) * rows].contiguous().numpy().view(np.uint8).ravel()
            blob[r, conv.w_off: conv.w_off + wb.size] = wb
            blob[r, conv.bias_off: conv.bias_off + bb.size] = bb
    head = packed.head[: plan.feat_c, : plan.classes].cpu().contiguous().numpy().view(np.uint8).ravel()
    blob[:, plan.head_off: plan.head_off + head.size] = head
    return torch.from_numpy(blob).to(packed.head.device)


# ---------------------------------------------------------------- source

_CONV_FIELDS = ("index", "cin", "cout", "h_out", "pool", "skip", "last", "rpt", "tpi", "mt", "ng", "nper", "nb", "nblk",
                "kc", "ks", "in_band", "in_off", "in_s", "in_wp", "in_img", "band_rows", "out_off", "out_s",
                "out_wp", "out_pad", "out_img", "skip_off", "skip_s", "skip_wp", "skip_img", "w_off", "wrow", "bias_off")


def source(plan: Plan) -> str:
    """The kernel's full CUDA C++ text for this plan: generated constants, megakernel.cu, and the
    generated weight loading and layer sequence."""
    g = [f"// generated for {len(plan.convs)} convolutions, batch {plan.batch}, cluster {plan.cluster}",
         f"constexpr int CS = {plan.cluster}, THREADS = {plan.threads}, WARPS = {plan.threads // 32}, "
         f"BATCH = {plan.batch};",
         f"constexpr int INPUT_KIND = {INPUT_KINDS.index(plan.input_kind)}, TIMING = {int(plan.timing)};",
         f"constexpr int CLASSES = {plan.classes}, C0 = {plan.c0}, H0 = {plan.h0};",
         f"constexpr int L0_OFF = 0, HEAD_OFF = {plan.head_off}, IMG_OFF = {plan.img_off}, IMG_BYTES = {plan.img_bytes}, "
         f"FEAT_OFF = {plan.feat_off}, FEATBUF_OFF = {plan.featbuf_off}, RED_OFF = {plan.red_off};",
         f"constexpr int BLOB_BYTES = {plan.blob_bytes}, NSECTIONS = {len(plan.sections)}, NSTAMPS = {plan.nstamps};",
         f"constexpr int NCONV = {len(plan.convs)}, MBAR_OFF = {plan.mbar_off}, HEAD_PARTS = {plan.convs[-1].ng};"]
    for c in plan.convs:
        names = {"h_out": "HOUT"}
        values = ", ".join(f"{names.get(f, f.upper())} = {int(getattr(c, f))}" for f in _CONV_FIELDS)
        g.append(f"struct C{c.index} {{ static constexpr int {values}; }};")
    loads = "\n".join(f"  load_section<{k}, {a}, {b}>(smem, mine);" for k, (a, b) in enumerate(plan.sections))
    n = len(plan.convs)
    arms = [f"  mbar_expect(bar_addr(smem, NSECTIONS + {k}), {nbytes});"
            for k, nbytes in enumerate(plan.layer_bytes[:-1])]
    arms.append(f"  if (rank == 0) mbar_expect(bar_addr(smem, NSECTIONS + {n - 1}), {plan.layer_bytes[-1]});")
    steps = ["  conv_layer<C1>(smem, rank, true);"]
    for i in range(2, n + 1):
        steps += [f"  handoff<C{i}>(smem, stamps, rank, {2 * (i - 1) + 1});",
                  f"  conv_layer<C{i}>(smem, rank, false);"]
    steps += ["  __syncthreads();", f"  stamp(stamps, rank, {2 * n + 1});",
              f"  if (rank == 0) mbar_wait(bar_addr(smem, NSECTIONS + {n - 1}));",
              f"  stamp(stamps, rank, {2 * n + 2});"]
    footer = ("\nDEV void load_weights(unsigned char* smem, const unsigned char* mine) {\n" + loads + "\n}\n"
              "DEV void arm_layers(unsigned char* smem, u32 rank) {\n" + "\n".join(arms) + "\n}\n"
              "DEV void run_convs(unsigned char* smem, long long* stamps, u32 rank) {\n" + "\n".join(steps) + "\n}\n")
    return "\n".join(g) + "\n\n" + COMMON.read_text() + "\n" + SOURCE.read_text() + footer


# ---------------------------------------------------------------- compile and launch

class MegakernelError(RuntimeError):
    """The kernel could not be compiled, loaded or launched here; the message says why."""


def driver_check(result, what: str):
    err = result[0]
    if int(err) != 0:
        raise MegakernelError(f"{what} failed: {err!r}")
    return result[1] if len(result) == 2 else result[1:]


def _out_buffer(size: int) -> bytes:
    """A new bytes object of at least `size` bytes for NVRTC to write into. Never `b" " * size`: for a
    size of 1 (an empty log) Python returns its shared one-byte object b" ", and NVRTC's terminating
    zero written into it changes every b" " of the process (a space printed as NUL, a pickled 32 read
    back as 0)."""
    return b"\0" * max(size, 2)  # a repeat of two or more bytes is always a new object


def compile_cubin(text: str, arch: str = "sm_90") -> tuple[bytes, str]:
    """NVRTC: CUDA C++ text -> cubin for `arch`, and the compiler's log (ptxas register report)."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:  # pragma: no cover - torch's CUDA wheels bring it
        raise MegakernelError("the megakernel needs cuda-python's NVRTC binding: pip install cuda-bindings") from exc
    prog = driver_check(nvrtc.nvrtcCreateProgram(text.encode(), b"fastnet_megakernel.cu", 0, [], []), "nvrtcCreateProgram")
    opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17", b"--ptxas-options=-v"]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    size = driver_check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
    log = _out_buffer(size)
    nvrtc.nvrtcGetProgramLog(prog, log)
    log_text = log.decode(errors="replace").strip("\x00 \n")
    if int(err) != 0:
        raise MegakernelError(f"NVRTC could not compile the megakernel:\n{log_text}")
    size = driver_check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
    cubin = _out_buffer(size)
    driver_check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
    nvrtc.nvrtcDestroyProgram(prog)
    return cubin, log_text


@dataclass
class Megakernel:
    """A compiled megakernel bound to its weights and output buffers (see `build`)."""

    plan: Plan
    blob: torch.Tensor
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
        # the weights' device: the image may be pinned host memory, which the kernel reads across the bus
        launch_on_stream(self._config, self.function, self._args, image, self.blob.device)
        return self.logits


def launch_on_stream(config, function, args: list, image: torch.Tensor, device) -> None:
    """One launch of a loaded kernel with `image` as its first argument, on torch's current stream of
    `device` (cuLaunchKernelEx). Allocates nothing and never synchronises: a CUDA graph can capture it."""
    from cuda.bindings import driver

    args[0].value = image.data_ptr()
    config.hStream = driver.CUstream(torch.cuda.current_stream(device).cuda_stream)
    driver_check(driver.cuLaunchKernelEx(config, function, ctypes.addressof(args[-1]), 0), "cuLaunchKernelEx")


def kernel_args(*pointers: int) -> list:
    """A kernel's pointer arguments for cuLaunchKernelEx: one c_void_p each (the first, the image, is
    set at every launch), then the array of their addresses that the driver reads."""
    args = [ctypes.c_void_p(ptr) for ptr in pointers]
    args.append((ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args]))
    return args


def hopper_arch(device, needs: str) -> str:
    """The NVRTC architecture ("sm_90", ...) of a CUDA device of compute capability 9.0 or more;
    MegakernelError saying what the kernel `needs` otherwise."""
    if device.type != "cuda":
        raise MegakernelError("the megakernel runs on a CUDA device")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 9:
        raise MegakernelError(f"the megakernel needs {needs} (compute capability 9.0+), this GPU is {major}.{minor}")
    return f"sm_{major}{minor}"


def load_function(cubin: bytes, name: bytes, shared_bytes: int):
    """(module, function) of a compiled kernel, loaded into torch's context, allowed `shared_bytes` of
    dynamic shared memory."""
    from cuda.bindings import driver

    module = driver_check(driver.cuModuleLoadData(cubin), "cuModuleLoadData")
    function = driver_check(driver.cuModuleGetFunction(module, name), "cuModuleGetFunction")
    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    driver_check(driver.cuFuncSetAttribute(function, attr, shared_bytes), "setting the shared-memory size")
    return module, function


def launch_config(blocks: int, threads: int, shared_bytes: int, attribute):
    """A one-dimensional CUlaunchConfig with one launch attribute (cluster dimension, cooperative)."""
    from cuda.bindings import driver

    config = driver.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = blocks, 1, 1
    config.blockDimX, config.blockDimY, config.blockDimZ = threads, 1, 1
    config.sharedMemBytes = shared_bytes
    config.attrs = [attribute]
    config.numAttrs = 1
    return config


def function_resources(function, log: str) -> dict:
    """Registers and local memory (spills) per thread of a loaded kernel, and ptxas's report."""
    from cuda.bindings import driver

    attr = driver.CUfunction_attribute
    return {"registers": driver_check(driver.cuFuncGetAttribute(attr.CU_FUNC_ATTRIBUTE_NUM_REGS, function), "regs"),
            "local_bytes": driver_check(driver.cuFuncGetAttribute(attr.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES, function),
                                        "local"),
            "ptxas": " ".join(line for line in log.splitlines() if "ptxas" in line)[:400]}


def output_buffers(outputs, classes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, top_class) for the kernel to write: new device buffers, or the caller's. Pinned host
    buffers are written by the kernel across the bus, so that a caller reads them without a copy."""
    device = torch.device(device)
    if outputs is None:
        return (torch.zeros(1, classes, dtype=torch.float32, device=device),
                torch.zeros(1, dtype=torch.int32, device=device))
    logits, top = outputs
    for t, dtype, shape in ((logits, torch.float32, (1, classes)), (top, torch.int32, (1,))):
        if t.dtype != dtype or tuple(t.shape) != shape or not t.is_contiguous():
            raise ValueError(f"megakernel outputs: expected contiguous {dtype} {shape}, got {t.dtype} {tuple(t.shape)}")
        if t.device != device and not (t.device.type == "cpu" and t.is_pinned()):
            raise ValueError(f"megakernel outputs live on {device} or in pinned host memory, not on {t.device}")
    return logits, top


def build_kernel(packed: PackedNet, cluster: int = DEFAULT_CLUSTER, input_kind: str = "fp16", timing: bool = False,
                 mean=None, std=None, threads: int = THREADS, band_groups: int = BAND_GROUPS,
                 outputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> Megakernel:
    """Plan, pack, compile (NVRTC) and load the megakernel for a packed FastNet on its CUDA device.
    `outputs` (logits (1, classes) FP32, top class (1,) int32) are where it writes, when given: device
    buffers or pinned host memory (see output_buffers); by default new device buffers."""
    from cuda.bindings import driver

    device = packed.head.device
    arch = hopper_arch(device, "thread-block clusters")
    plan = make_plan(packed, cluster, input_kind, timing, threads, band_groups)
    t0 = time.perf_counter()
    cubin, log = compile_cubin(source(plan), arch)
    torch.cuda.current_stream(device)  # the primary context is current: the module loads into torch's
    module, function = load_function(cubin, b"fastnet_megakernel", plan.shared_bytes)
    if cluster > 8:
        driver_check(driver.cuFuncSetAttribute(
            function, driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
            "allowing a non-portable cluster size")
    cluster_attr = driver.CUlaunchAttribute()
    cluster_attr.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    cluster_attr.value.clusterDim.x, cluster_attr.value.clusterDim.y, cluster_attr.value.clusterDim.z = cluster, 1, 1
    config = launch_config(cluster, plan.threads, plan.shared_bytes, cluster_attr)
    active = driver_check(driver.cuOccupancyMaxActiveClusters(function, config), "cuOccupancyMaxActiveClusters")
    if active < 1:
        raise MegakernelError(f"this GPU cannot place a cluster of {cluster} CTAs with "
                              f"{plan.shared_bytes // 1024} KB of shared memory each; try cluster=8")
    compile_s = time.perf_counter() - t0
    resources = {**function_resources(function, log), "shared_bytes": plan.shared_bytes, "cluster": cluster,
                 "threads": plan.threads, "max_active_clusters": active}
    blob = pack_blob(packed, plan, mean, std)
    logits, top = output_buffers(outputs, plan.classes, device)
    stamps = torch.zeros(cluster, plan.nstamps, dtype=torch.int64, device=device) if timing else None
    args = kernel_args(0, blob.data_ptr(), logits.data_ptr(), top.data_ptr(),
                       stamps.data_ptr() if stamps is not None else 0)
    return Megakernel(plan, blob, logits, top, stamps, function, module, resources, compile_s, args, config)


def layer_times(kernel: Megakernel, image: torch.Tensor, calls: int = 200) -> list[dict]:
    """Per-layer microseconds inside one launch (a TIMING build): for each stamp, the mean over calls
    of the latest CTA's reading minus the kernel's earliest start, and the step from the previous
    stamp. 'conv i computed' -> 'conv i handed off' is the barrier (the wait for the slowest CTA and
    the barrier itself); the step into 'conv i computed' is that layer's work in the slowest CTA."""
    if kernel.stamps is None:
        raise ValueError("build the megakernel with timing=True to read per-layer times")
    readings = []
    for _ in range(calls):
        kernel.stamps.zero_()
        kernel.launch(image)
        torch.cuda.synchronize(image.device)
        s = kernel.stamps.cpu().numpy().astype(np.float64)
        active = s[:, 0] > 0
        start = s[active, 0].min()
        readings.append([(s[active, i].max() - start) / 1000.0 for i in range(s.shape[1])])
    mean = np.mean(readings, axis=0)
    names = kernel.plan.stamp_names()
    rows, previous = [], 0.0
    for name, at in zip(names, mean):
        rows.append({"stamp": name, "at_us": round(float(at), 3), "step_us": round(float(at - previous), 3)})
        previous = at
    return rows


def callable_kernel(kernel, packed: PackedNet, example: torch.Tensor, input_kind: str = "fp16"):
    """fn: one (1, 3, 32, 32) FP16 contiguous CUDA image (or a (32, 32, 3) uint8 one) -> (1, classes)
    FP32 logits in one launch of `kernel` (either megakernel), returning its own buffer; called once
    on `example` here. It carries .kernel, .packed, .kernels_per_call and .compile_s."""
    expected = (torch.float16, (1, 3, 32, 32)) if input_kind == "fp16" else (torch.uint8, (32, 32, 3))

    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.dtype is not expected[0] or tuple(x.shape) != expected[1] or not x.is_contiguous() or x.data_ptr() % 16:
            raise ValueError(f"the megakernel takes a contiguous, 16-byte aligned {expected[0]} {expected[1]} tensor, "
                             f"got {x.dtype} {tuple(x.shape)}: copy it with x.to({expected[0]}).contiguous()")
        return kernel.launch(x)

    fn(example.to(expected[0]).contiguous() if input_kind == "fp16" else example)
    torch.cuda.synchronize(example.device)
    fn.kernel = kernel
    fn.packed = packed
    fn.kernels_per_call = 1
    fn.compile_s = kernel.compile_s
    return fn


def notes(kernel: Megakernel) -> list[str]:
    """What a variant's notes say of the one-cluster kernel: its launch, compile time and resources."""
    r, plan = kernel.resources, kernel.plan
    lines = [f"megakernel: 1 kernel launch per call, a cluster of {plan.cluster} CTAs x {plan.threads} threads",
             f"NVRTC compile + load {kernel.compile_s:.2f} s",
             f"{r['registers']} registers per thread, {r['local_bytes']} bytes local memory (spills), "
             f"{r['shared_bytes'] / 1024:.1f} KB shared memory per CTA ({plan.blob_bytes / 1024:.1f} KB weights)"]
    if plan.batch == 2:
        lines.append("mirror TTA inside the kernel (batch of 2, logits averaged)")
    return lines

"""The grid megakernel (F2-sized FastNets over every SM): its plan (tiles, buffers, shared memory), its
packed weights, a numpy model of its addressing against the reference, and its source compiled for
sm_90 on the CPU; on a CUDA machine (marker `gpu`), the kernel against the reference and the FP32
model, and thousands of graph replays."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from conftest import model_logits, relative_error
from fastcifar.core.kernels import KERNEL_TOLERANCE, TOLERANCE, grid, megakernel, pack, reference
from fastcifar.core.kernels.samples import random_fastnet

on_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
F2 = ((128, 512, 512), 3)  # the series' F2 shape (with the mirror)
SHAPES = [(F2[0], F2[1], True), ((32, 64, 128), 2, False), ((64, 256, 256), 3, True)]


def _plan(widths, convs, mirror, **kw):
    return grid.plan(pack(random_fastnet(widths, convs), mirror=mirror), 132, **kw)


@pytest.mark.parametrize("widths,convs,mirror", SHAPES)
def test_every_output_is_computed_by_one_tile_from_rows_its_band_holds(widths, convs, mirror):
    p = _plan(widths, convs, mirror)
    for layer in p.layers:
        seen = np.zeros((p.batch, layer.h_out, layer.nblocks * layer.bn), dtype=int)
        for cta, tiles in grid.tiles_of(p, layer).items():
            assert 0 <= cta < p.grid
            for b, y0, nblk in tiles:
                rows = range(y0, min(y0 + layer.r, layer.h_out))
                seen[b, rows.start:rows.stop, nblk * layer.bn:(nblk + 1) * layer.bn] += 1
                ra = 2 * y0 if layer.pool else y0  # padded input rows the band holds
                held = range(ra, ra + min(layer.a_rows, layer.in_wp - ra))
                for y in rows:  # a 3x3 conv at padded row cy reads cy..cy+2; pooled: two conv rows
                    top = 2 * y if layer.pool else y
                    bottom = top + (3 if layer.pool else 2)
                    assert held.start <= top and bottom < held.stop, (layer.index, y0, y)
        assert (seen[:, :, : layer.cout] == 1).all(), layer.index
        assert layer.mt * 16 >= layer.r * layer.h_out


def test_layers_read_and_write_their_own_buffers_and_residuals_their_group_s_first():
    p = _plan(*F2, True)
    spans = []
    for layer in p.layers[:-1]:
        spans.append((layer.out_goff, layer.out_goff + p.batch * layer.out_img * 2))
    spans += [(p.counters_goff, p.counters_goff + 4 * len(p.layers)),
              (p.partials_goff, p.partials_goff + p.batch * p.layers[-1].nblocks * p.classes * 4)]
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] <= p.work_bytes
    for prev, layer in zip(p.layers, p.layers[1:]):
        assert layer.in_goff == prev.out_goff and (layer.in_wp, layer.in_s) == (prev.out_wp, prev.out_s)
    skips = {l.index: l.skip_goff for l in p.layers if l.skip}
    by_index = {l.index: l for l in p.layers}
    assert skips == {3: by_index[1].out_goff, 6: by_index[4].out_goff, 9: by_index[7].out_goff}


@pytest.mark.parametrize("widths,convs,mirror", SHAPES)
def test_each_layer_s_shared_memory_fits_below_the_kept_regions(widths, convs, mirror):
    p = _plan(widths, convs, mirror)
    for l in p.layers:
        assert l.w_bytes <= l.a_off and l.a_off + l.a_bytes() <= l.red_off and l.red_off + l.red_bytes() <= l.feat_off
        assert max(l.feat_off, l.red_off + l.red_bytes()) <= p.img_off
        assert l.a_off % 128 == 0 and l.w_bytes % 16 == 0 and l.w_goff % 128 == 0
    assert p.img_off + 3 * 32 * 32 * 2 <= p.l0s_off < p.mbar_off < p.shared_bytes <= megakernel.SHARED_LIMIT


def test_f2_does_not_fit_one_cluster_but_fits_the_grid():
    packed = pack(random_fastnet(*F2), mirror=True)
    with pytest.raises(megakernel.DoesNotFit, match="KB of shared memory"):
        megakernel.make_plan(packed)
    assert grid.plan(packed, 132).layers[-1].last


def test_a_fixed_tiling_is_used_or_refused():
    p = _plan(*F2, True, fixed={5: (7, 8)})
    assert (p.layers[4].r, p.layers[4].bn) == (7, 8)
    with pytest.raises(ValueError, match="no tile"):
        _plan(*F2, True, fixed={5: (7, 64)})


def test_packed_weights_hold_each_tile_s_channels_in_kernel_layout():
    packed = pack(random_fastnet((32, 64, 128), 3), mirror=True)
    p = grid.plan(packed, 132)
    blob = grid.pack_weights(packed, p).numpy()
    for gl, layer in zip(p.layers, packed.layers[1:]):
        j = gl.nblocks - 1  # the last block
        at = gl.w_goff + j * gl.w_bytes
        rows = blob[at: at + gl.bn * gl.wrow * 2].view(np.float16).reshape(gl.bn, gl.wrow)
        bias = blob[at + gl.bn * gl.wrow * 2: at + gl.bn * gl.wrow * 2 + gl.bn * 4].view(np.float32)
        n = j * gl.bn + 3  # a channel of that block: row 3, k = tap * cin + c
        w = layer.weight[:, n].reshape(9, layer.c_in).numpy()
        assert np.array_equal(rows[3].reshape(-1)[: 9 * gl.cin].reshape(9, gl.cin)[:, : layer.c_in], w)
        assert bias[3] == layer.bias[n].item()
    l0 = blob[p.l0_goff: p.l0_goff + p.c0 * 13 * 4].view(np.float32)
    w0 = packed.layers[0].weight.float().reshape(2, 2, 3, p.c0)  # rows (dy * 2 + dx) * 3 + c
    assert l0[5 * 12 + 1 * 4 + 1 * 2 + 0] == w0[1, 0, 1, 5].item()  # channel 5, input c 1, dy 1, dx 0
    head = blob[p.head_goff: p.head_goff + packed.head.numel() * 2].view(np.float16)
    assert np.array_equal(head, packed.head.numpy().ravel())


def test_the_last_layer_keeps_whole_images_per_tile():
    for widths, convs, mirror in SHAPES:
        last = _plan(widths, convs, mirror).layers[-1]
        assert last.r == last.h_out and last.nbands == 1


def _nvrtc_available() -> bool:
    try:
        from cuda.bindings import nvrtc

        return int(nvrtc.nvrtcVersion()[0]) == 0
    except Exception:
        return False


@pytest.mark.skipif(not _nvrtc_available(), reason="needs NVRTC (cuda-bindings and the NVRTC library)")
@pytest.mark.parametrize("bulk", [True, False])
def test_the_grid_source_compiles_for_sm90_with_nvrtc_without_spills(bulk):
    p = _plan(*F2, True, timing=True, band_bulk=bulk)
    cubin, log = megakernel.compile_cubin(grid.source(p), "sm_90")
    assert cubin[:4] == b"\x7fELF"
    assert "0 bytes spill stores, 0 bytes spill loads" in log, log


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_the_grid_source_compiles_for_sm90_with_nvcc(tmp_path):
    src = tmp_path / "fastnet_grid.cu"
    src.write_text(grid.source(_plan(*F2, True)))
    proc = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o",
                           str(tmp_path / "k.cubin"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "0 bytes spill stores" in proc.stderr


def test_stamp_names_cover_every_layer():
    p = _plan(*F2, True, timing=True)
    names = p.stamp_names()
    assert len(names) == p.nstamps and names[0] == "start" and names[-1] == "logits done"
    assert "conv9 stored" in names and "conv1 inputs ready" in names and "conv5 weights in" in names


# ---------------------------------------------------------------- on the GPU

@pytest.mark.gpu
@on_cuda
@pytest.mark.parametrize("widths,convs,mirror", SHAPES)
@pytest.mark.parametrize("bulk", [True, False])
def test_grid_kernel_matches_reference_and_fp32_model(widths, convs, mirror, bulk):
    model = random_fastnet(widths, convs).cuda()
    packed = pack(model, mirror=mirror, device="cuda")
    kernel = grid.build_kernel(packed, band_bulk=bulk)
    xs = torch.randn(200, 3, 32, 32, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    want = model_logits(model, xs, mirror)
    agree = 0
    for i in range(len(xs)):
        got = kernel.launch(xs[i:i + 1].half().contiguous()).clone()
        if i < 30:
            assert relative_error(got, reference(packed, xs[i:i + 1])) <= KERNEL_TOLERANCE
        assert relative_error(got[0], want[i]) <= TOLERANCE
        agree += int(got[0].argmax() == want[i].argmax())
    torch.cuda.synchronize()
    assert int(kernel.top_class.item()) == int(got.argmax())
    assert agree >= 0.95 * len(xs)  # random weights leave near-ties (the cluster kernel's test bounds them)


@pytest.mark.gpu
@on_cuda
def test_wide_networks_build_on_the_grid_and_replay_10000_times_identically():
    from fastcifar.core.optimize import Spec
    from fastcifar.core.optimize import build as build_variant

    model = random_fastnet(*F2).cuda()
    example = torch.randn(1, 3, 32, 32, device="cuda")
    variant = build_variant(model, Spec(precision="fp16", cuda_graph=True, mirror=True, backend="megakernel"), example)
    assert any("grid" in n for n in variant.notes) and any("not one cluster" in n for n in variant.notes)
    x = variant.prepare(example)
    first = variant(x).clone()
    for i in range(10_000):
        out = variant(x)
        if i % 1000 == 999:
            torch.cuda.synchronize()
            assert torch.equal(out, first), i
    other = variant.prepare(torch.randn(1, 3, 32, 32, device="cuda"))
    assert not torch.equal(variant(other), first)  # the graph reads its input every call
    assert torch.equal(variant(variant.prepare(example)), first)  # the same input again: the same logits


@pytest.mark.gpu
@on_cuda
def test_grid_layer_timing_reads_increasing_stamps():
    from fastcifar.core.kernels import layer_timing

    rows = layer_timing(random_fastnet(*F2).cuda(), torch.zeros(1, 3, 32, 32, device="cuda"), mirror=True, calls=20)
    ats = [r["at_us"] for r in rows]
    assert ats == sorted(ats) and ats[-1] > 0 and len(rows) == 5 * 9 + 2


@pytest.mark.parametrize("widths,convs,mirror", SHAPES)
def test_mma_rows_cover_each_band_position_once_and_load_with_fewer_passes(widths, convs, mirror):
    ordered, plain = _plan(widths, convs, mirror), _plan(widths, convs, mirror, reorder=False)
    for layer, same in zip(ordered.layers, plain.layers):
        positions = [p for p in layer.order if p != grid.NONE]
        assert sorted(positions) == list(range(layer.r * layer.h_out)) and len(layer.order) <= layer.mt * 16
        assert same.order == tuple(range(layer.r * layer.h_out))
        assert grid.load_passes(layer, layer.order) <= grid.load_passes(same, same.order)
        if not layer.pool:  # unpooled rows can always be spread over 8 bank groups here
            groups = -(-len(layer.order) // 8) * len({min(layer.r, layer.h_out - y0) for y0 in range(0, layer.h_out, layer.r)})
            assert grid.load_passes(layer, layer.order) <= groups + 1, layer.index


def test_bank_groups_follow_the_layout():
    layer = _plan(*F2, True).layers[4]  # conv5: 7x7, stride 520 halves = 65 chunks of 16 bytes
    assert layer.in_s // 8 == 65 and not layer.pool
    assert grid.bank_group(layer, 0) == 0 and grid.bank_group(layer, 1) == 1
    assert grid.bank_group(layer, layer.h_out) == layer.in_wp % 8  # next row: in_wp positions on


# ---------------------------------------------------------------- the kernel's addressing, modelled on the CPU

def _gelu(v):
    return torch.nn.functional.gelu(torch.from_numpy(v)).numpy()


def _model_of_the_kernel(packed, p, x):
    """What grid.cu computes, tile by tile, from the packed weights and the plan's offsets, band rows,
    row order and buffers: the same addresses, in numpy (FP32 sums in another order)."""
    blob = grid.pack_weights(packed, p).numpy()
    work = np.zeros(p.work_bytes, dtype=np.uint8)
    image = x.half().numpy()[0]  # (3, 32, 32)
    l0 = blob[p.l0_goff: p.l0_goff + p.c0 * 13 * 4].view(np.float32)
    w0, b0 = l0[: p.c0 * 12].reshape(p.c0, 12), l0[p.c0 * 12:]

    def layout(goff, wp, s):
        n = p.batch * wp * wp * s
        return work[goff: goff + 2 * n].view(np.float16).reshape(p.batch, wp, wp, s)

    partials = np.zeros((p.batch, p.layers[-1].nblocks, p.classes), dtype=np.float32)
    for l in p.layers:
        wslices = blob[l.w_goff: l.w_goff + l.nblocks * l.w_bytes].reshape(l.nblocks, l.w_bytes)
        for tile in range(l.tiles):
            nblk, rest = tile % l.nblocks, tile // l.nblocks
            b, y0 = rest // l.nbands, (rest % l.nbands) * l.r
            ra = 2 * y0 if l.pool else y0
            rows = min(l.a_rows, l.in_wp - ra)
            if l.first:  # the whitening rows, from the (mirrored) image
                band = np.zeros((rows, l.in_wp, l.in_s), dtype=np.float16)
                img = image[:, :, ::-1] if b == 1 else image
                for r in range(rows):
                    for col in range(l.in_wp):
                        y, xx = ra + r - 1, col - 1
                        if 0 <= y < p.h0 and 0 <= xx < p.h0:
                            px = img[:, y:y + 2, xx:xx + 2].astype(np.float32).reshape(12)  # k = c*4 + dy*2 + dx
                            band[r, col, : p.c0] = _gelu(w0 @ px + b0).astype(np.float16)
            else:
                band = layout(l.in_goff, l.in_wp, l.in_s)[b, ra: ra + rows]
            w = wslices[nblk, : l.bn * l.wrow * 2].view(np.float16).reshape(l.bn, l.wrow)[:, : 9 * l.cin]
            bias = wslices[nblk, l.bn * l.wrow * 2: l.bn * l.wrow * 2 + l.bn * 4].view(np.float32)
            rows_here = min(l.r, l.h_out - y0)
            feat = []
            for position in l.order:
                if position == grid.NONE or position // l.h_out >= rows_here:
                    continue
                oy, ox = divmod(position, l.h_out)
                sums = []
                for s in range(l.subs):
                    cy, cx = (2 * oy + (s >> 1), 2 * ox + (s & 1)) if l.pool else (oy, ox)
                    patch = band[cy:cy + 3, cx:cx + 3, : l.cin].astype(np.float32).reshape(-1)  # k = tap * cin + c
                    sums.append(w.astype(np.float32) @ patch)
                v = _gelu(np.max(sums, axis=0) + bias)
                n0, n1 = nblk * l.bn, min((nblk + 1) * l.bn, l.cout)
                if l.skip:
                    v[: n1 - n0] += layout(l.skip_goff, l.out_wp, l.out_s)[b, y0 + oy + 1, ox + 1, n0:n1].astype(np.float32)
                if l.last:
                    feat.append(v.astype(np.float16).astype(np.float32))
                else:
                    layout(l.out_goff, l.out_wp, l.out_s)[b, y0 + oy + 1, ox + 1, n0:n1] = v[: n1 - n0].astype(np.float16)
            if l.last:
                head = blob[p.head_goff: p.head_goff + l.cout * p.classes * 2].view(np.float16).reshape(l.cout, p.classes)
                n0, n1 = nblk * l.bn, min((nblk + 1) * l.bn, l.cout)
                partials[b, nblk] = np.max(feat, axis=0)[: n1 - n0] @ head[n0:n1].astype(np.float32)
    return torch.from_numpy(partials.sum(axis=(0, 1)) / p.batch)[None]


@pytest.mark.parametrize("widths,convs,mirror", [((32, 64, 128), 3, True), ((32, 64, 64), 2, False)])
@pytest.mark.parametrize("reorder", [True, False])
def test_the_kernel_s_addressing_computes_the_reference(widths, convs, mirror, reorder):
    packed = pack(random_fastnet(widths, convs), mirror=mirror)
    p = grid.plan(packed, 132, reorder=reorder)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got, want = _model_of_the_kernel(packed, p, x), reference(packed, x)
    assert relative_error(got, want) <= KERNEL_TOLERANCE, relative_error(got, want)

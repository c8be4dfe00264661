"""FastNet's megakernel: the packed layout and the PyTorch reference against the model on the CPU, the
kernel's plan (work split, shared-memory layout, per-CTA weight images) and its CUDA source compiled
for sm_90 (NVRTC, nvcc) on the CPU, and, on a CUDA machine (marker `gpu`), the kernel itself."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import model_logits, relative_error
from fastcifar.core.kernels import KERNEL_TOLERANCE, TOLERANCE, build, megakernel, pack, reference
from fastcifar.core.kernels.samples import random_fastnet

LIB = Path(__file__).resolve().parents[1] / "lib"
on_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
F1 = ((32, 64, 128), 2)  # the series' F1 shape


@pytest.mark.parametrize("convs", [2, 3])
def test_folded_model_matches_unfolded(convs):
    model = random_fastnet((16, 32, 32), convs)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.fold_batchnorm()(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("convs", [2, 3])
def test_packed_weights_follow_the_kernel_layout(convs):
    model = random_fastnet((16, 32, 24), convs)
    packed = pack(model)
    conv = model.fold_batchnorm().groups[1].convs[0]
    layer = packed.layers[1 + convs]
    assert (layer.c_in, layer.c_out, layer.h_in, layer.h_out, layer.pool) == (16, 32, 15, 7, True)
    kh, kw, c, o = 2, 0, 5, 7  # row k = (kh * 3 + kw) * c_in + c
    assert layer.weight[(kh * 3 + kw) * 16 + c, o] == conv.weight[o, c, kh, kw].half()
    assert layer.weight.shape == (layer.k, layer.c_out) and layer.weight.dtype == torch.float16
    assert [l.h_out for l in packed.layers] == [31] + [h for h in (15, 7, 3) for _ in range(convs)]
    skips = [l.skip for l in packed.layers]
    assert skips == ([None] * 7 if convs == 2 else [None, None, None, 1, None, None, 4, None, None, 7])
    assert packed.head.shape == (24, 10) and pack(model, mirror=True).batch == 2


@pytest.mark.parametrize("convs", [2, 3])
@pytest.mark.parametrize("mirror", [False, True])
def test_reference_matches_fp32_model(convs, mirror):
    model = random_fastnet((16, 32, 64), convs)
    packed = pack(model, mirror=mirror)
    errors = []
    for seed in range(8):
        torch.manual_seed(100 + seed)
        x = torch.randn(1, 3, 32, 32)
        got = reference(packed, x)
        assert got.shape == (1, 10) and got.dtype == torch.float32
        errors.append(relative_error(got, model_logits(model, x, mirror)))
    assert max(errors) <= TOLERANCE, errors
    assert max(errors) > 0  # FP16 rounding is really there: this is not the FP32 model run again


def test_reference_mirror_averages_the_flipped_image():
    model = random_fastnet((16, 16, 32), 2)
    plain, mirrored = pack(model), pack(model, mirror=True)
    x = torch.randn(1, 3, 32, 32)
    both = (reference(plain, x) + reference(plain, x.flip(3))) / 2
    assert torch.allclose(reference(mirrored, x), both, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(reference(plain, x), both, rtol=1e-3, atol=1e-4)


def test_reference_rejects_a_batch():
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 32\)"):
        reference(pack(random_fastnet((16, 16, 16), 2)), torch.zeros(2, 3, 32, 32))


def test_build_needs_a_known_backend():
    with pytest.raises(ValueError, match="backend"):
        build(random_fastnet((16, 16, 16), 2), "fused-nothing", torch.zeros(1, 3, 32, 32))


def test_pack_refuses_other_models():
    with pytest.raises(TypeError, match="FastNet"):
        pack(torch.nn.Linear(3, 10))


# ---------------------------------------------------------------- the plan, on the CPU

PLANS = [(F1[0], F1[1], False), (F1[0], F1[1], True), ((32, 64, 128), 3, False), ((16, 32, 64), 3, True)]


@pytest.mark.parametrize("widths,convs,mirror", PLANS)
def test_every_output_tile_is_computed_by_exactly_one_cta(widths, convs, mirror):
    plan = megakernel.make_plan(pack(random_fastnet(widths, convs), mirror=mirror))
    for conv in plan.convs:
        work = [pair for rank in range(plan.cluster) for pair in megakernel.cta_work(plan, conv, rank)]
        expected = {(t, n8) for t in range(conv.mt) for n8 in range(-(-conv.cout // 8))}
        assert sorted(work) == sorted(expected), conv.index  # each once, none missing
        assert conv.rpt * conv.h_out <= 16 or conv.rpt == 1  # a tile's rows fit one 16-row MMA tile
        assert conv.tpi * conv.rpt >= conv.h_out and conv.mt == plan.batch * conv.tpi


@pytest.mark.parametrize("widths,convs,mirror", PLANS)
def test_shared_memory_regions_are_aligned_apart_and_within_the_limit(widths, convs, mirror):
    plan = megakernel.make_plan(pack(random_fastnet(widths, convs), mirror=mirror))
    spans = sorted(megakernel.regions(plan).values())
    for (a0, a1), (b0, _) in zip(spans, spans[1:]):
        assert a0 % 16 == 0 and a1 <= b0, spans
    assert spans[-1][1] <= plan.shared_bytes <= megakernel.SHARED_LIMIT
    for c in plan.convs:
        for stride in (c.in_s, c.wrow) + ((c.out_s,) if not c.last else ()):
            assert stride % 8 == 0 and (stride // 2) % 8 == 4, (c.index, stride)  # 16-byte rows, no bank conflicts
        assert c.cin % 16 == 0 and c.in_s >= c.cin and c.wrow >= c.kc * 16
    assert plan.layer_bytes[:-1] == [plan.batch * c.h_out ** 2 * c.cout * 2 for c in plan.convs[:-1]]
    assert plan.layer_bytes[-1] == plan.batch * plan.convs[-1].ng * plan.classes * 4  # partial logits


def test_the_first_layer_splits_its_channels_only_as_far_as_shared_memory_allows():
    plain = megakernel.make_plan(pack(random_fastnet(*F1)), band_groups=4)
    assert plain.convs[0].ng == 4 and plain.convs[0].nper == 1
    mirrored = megakernel.make_plan(pack(random_fastnet(*F1), mirror=True), band_groups=4)  # twice the rows
    assert mirrored.convs[0].ng == 2 and mirrored.shared_bytes <= megakernel.SHARED_LIMIT
    assert megakernel.make_plan(pack(random_fastnet(*F1)), band_groups=1).convs[0].ng == 1
    assert megakernel.make_plan(pack(random_fastnet(*F1))).convs[0].ng == megakernel.BAND_GROUPS


def test_a_network_too_wide_for_one_cluster_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"needs \d+ KB of shared memory per CTA.*small widths"):
        megakernel.make_plan(pack(random_fastnet((128, 512, 512), 3), mirror=True))
    with pytest.raises(ValueError, match="multiples of 16"):
        megakernel.make_plan(pack(random_fastnet((24, 40, 64), 2)))
    with pytest.raises(ValueError, match="cluster must be one of"):
        megakernel.make_plan(pack(random_fastnet(*F1)), cluster=4)


@pytest.mark.parametrize("convs,mirror", [(3, False), (2, True)])
def test_each_cta_holds_its_channels_of_every_layer(convs, mirror):
    packed = pack(random_fastnet((32, 64, 128), convs), mirror=mirror)
    plan = megakernel.make_plan(packed)
    blob = megakernel.pack_blob(packed, plan).numpy()
    assert blob.shape == (plan.cluster, plan.blob_bytes)
    for conv, layer in zip(plan.convs, packed.layers[1:]):
        rows = conv.nper * 8
        for rank in (0, 5, plan.cluster - 1):
            w = blob[rank, conv.w_off: conv.w_off + rows * conv.wrow * 2].view(np.float16).reshape(rows, conv.wrow)
            b = blob[rank, conv.bias_off: conv.bias_off + rows * 4].view(np.float32)
            first = (rank % conv.ng) * rows
            for r in range(rows):
                n = first + r
                if n >= layer.c_out:
                    assert not w[r].any() and b[r] == 0
                    continue
                want = layer.weight[:, n].reshape(9, layer.c_in).numpy()  # [tap][channel]
                got = w[r, : 9 * conv.cin].reshape(9, conv.cin)
                assert np.array_equal(got[:, : layer.c_in], want) and not got[:, layer.c_in:].any()
                assert not w[r, 9 * conv.cin:].any() and b[r] == layer.bias[n].item()
    head = blob[0, plan.head_off: plan.head_off + plan.feat_c * plan.classes * 2].view(np.float16)
    assert np.array_equal(head.reshape(plan.feat_c, plan.classes), packed.head.numpy())


def test_uint8_input_folds_the_normalisation_into_layer_0():
    from fastcifar.core.data import CIFAR10_MEAN, CIFAR10_STD

    packed = pack(random_fastnet(*F1))
    plan = megakernel.make_plan(packed, input_kind="uint8")
    raw = megakernel._whitening_params(packed, plan.convs[0].cin, "uint8", CIFAR10_MEAN, CIFAR10_STD)
    cin = plan.convs[0].cin
    w = torch.from_numpy(raw[: cin * 32].view(np.float16).reshape(cin, 16)[:, :12].astype(np.float32))
    b = torch.from_numpy(raw[cin * 32:].view(np.float32))
    image = torch.randint(0, 256, (3, 2, 2)).float()  # one 2x2 patch, k = channel * 4 + dy * 2 + dx
    normalised = (image / 255 - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    layer = packed.layers[0]
    want = normalised.permute(1, 2, 0).reshape(-1) @ layer.weight.float() + layer.bias  # k = (dy*2+dx)*3 + c
    got = w @ image.reshape(-1) + b
    assert torch.allclose(got[: layer.c_out], want, rtol=2e-3, atol=2e-3)
    assert not got[layer.c_out:].any()
    with pytest.raises(ValueError, match="mean and std"):
        megakernel.pack_blob(packed, plan)


def _nvrtc_available() -> bool:
    try:
        from cuda.bindings import nvrtc

        return int(nvrtc.nvrtcVersion()[0]) == 0
    except Exception:
        return False


@pytest.mark.skipif(not _nvrtc_available(), reason="needs NVRTC (cuda-bindings and the NVRTC library)")
@pytest.mark.parametrize("widths,convs,mirror,kind", [(F1[0], F1[1], False, "fp16"), (F1[0], F1[1], True, "fp16"),
                                                      ((32, 64, 128), 3, False, "uint8")])
def test_the_cuda_source_compiles_for_sm90_with_nvrtc_without_spills(widths, convs, mirror, kind):
    plan = megakernel.make_plan(pack(random_fastnet(widths, convs), mirror=mirror), input_kind=kind, timing=True)
    cubin, log = megakernel.compile_cubin(megakernel.source(plan), "sm_90")
    assert cubin[:4] == b"\x7fELF", "NVRTC returns an ELF cubin"
    assert "0 bytes spill stores, 0 bytes spill loads" in log, log


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_the_cuda_source_compiles_for_sm90_with_nvcc(tmp_path):
    plan = megakernel.make_plan(pack(random_fastnet(*F1)))
    src = tmp_path / "fastnet_megakernel.cu"
    src.write_text(megakernel.source(plan))
    proc = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o",
                           str(tmp_path / "k.cubin"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "0 bytes spill stores" in proc.stderr and (tmp_path / "k.cubin").stat().st_size > 0


def test_layer_timing_names_every_stamp():
    plan = megakernel.make_plan(pack(random_fastnet(*F1)), timing=True)
    names = plan.stamp_names()
    assert len(names) == plan.nstamps and names[0] == "start" and names[-1] == "head done"
    assert names.count("conv1 pushed") == 1 and "partial logits in CTA 0" in names


# ---------------------------------------------------------------- on the GPU

GPU_SHAPES = [(F1[0], F1[1], False), (F1[0], F1[1], True), ((32, 64, 128), 3, False)]


def _parity(fn, model, packed, mirror, n=1000):
    """Worst relative error and argmax agreements of fn against the FP32 model (and the reference)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    xs = torch.randn(n, 3, 32, 32, generator=gen).cuda()
    want = model_logits(model, xs, mirror)
    worst, agree, decisive, decisive_agree = 0.0, 0, 0, 0
    for i in range(n):
        x = xs[i:i + 1]
        got = fn(x.half().contiguous()).clone()
        if i < 100:
            assert relative_error(got, reference(packed, x)) <= KERNEL_TOLERANCE
        worst = max(worst, relative_error(got[0], want[i]))
        same = bool(got[0].argmax() == want[i].argmax())
        agree += same
        top2 = want[i].topk(2).values
        if (top2[0] - top2[1]) > 2 * TOLERANCE * want[i].abs().max():  # a flip would exceed the tolerance
            decisive += 1
            decisive_agree += same
    return worst, agree / n, decisive_agree / max(decisive, 1), decisive


@pytest.mark.gpu
@on_cuda
@pytest.mark.parametrize("widths,convs,mirror", GPU_SHAPES)
def test_megakernel_matches_fp32_model_on_cuda(widths, convs, mirror):
    model = random_fastnet(widths, convs).cuda()
    fn, notes = build(model, "megakernel", torch.zeros(1, 3, 32, 32, device="cuda", dtype=torch.float16), mirror=mirror)
    worst, agree, decisive_agree, decisive = _parity(fn, model, fn.packed, mirror)
    assert worst <= TOLERANCE, (worst, notes)
    # Random weights leave near-ties that FP16 may flip within the tolerance; decisions whose top-2
    # margin exceeds twice the tolerance must all agree (trained networks: J4's parity on the test set).
    assert decisive > 500 and decisive_agree >= 0.999, (decisive, decisive_agree)
    assert agree >= 0.99, agree


@pytest.mark.gpu
@on_cuda
def test_megakernel_uint8_input_matches_the_normalised_model():
    from fastcifar.core.data import CIFAR10_MEAN, CIFAR10_STD

    model = random_fastnet(*F1).cuda()
    packed = pack(model, device="cuda")
    kernel = megakernel.build_kernel(packed, input_kind="uint8", mean=CIFAR10_MEAN, std=CIFAR10_STD)
    mean = torch.tensor(CIFAR10_MEAN, device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device="cuda").view(1, 3, 1, 1)
    for seed in range(50):
        image = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, device="cuda",
                              generator=torch.Generator(device="cuda").manual_seed(seed))
        got = kernel.launch(image).clone()
        x = (image.permute(2, 0, 1).unsqueeze(0).float() / 255 - mean) / std
        assert relative_error(got, model_logits(model, x, False)) <= TOLERANCE
        torch.cuda.synchronize()
        assert int(kernel.top_class.item()) == int(got.argmax())


@pytest.mark.gpu
@on_cuda
def test_megakernel_graph_gives_identical_logits_over_10000_replays():
    from fastcifar.core.optimize import Spec
    from fastcifar.core.optimize import build as build_variant

    model = random_fastnet(*F1).cuda()  # with the mirror: a batch of two inside the kernel
    example = torch.randn(1, 3, 32, 32, device="cuda")
    variant = build_variant(model, Spec(precision="fp16", cuda_graph=True, mirror=True, backend="megakernel"), example)
    x = variant.prepare(example)
    first = variant(x).clone()
    for i in range(10_000):
        out = variant(x)
        if i % 1000 == 999:
            torch.cuda.synchronize()
            assert torch.equal(out, first), i
    other = variant.prepare(torch.randn(1, 3, 32, 32, device="cuda"))
    assert not torch.equal(variant(other), first)  # the graph reads its input every call


_KILLED_CHILD = """
import sys, torch
sys.path.insert(0, {lib!r})
from fastcifar.core.kernels import build
from fastcifar.core.kernels.samples import random_fastnet
fn, _ = build(random_fastnet((32, 64, 128), 2).cuda(), "megakernel", torch.zeros(1, 3, 32, 32, device="cuda", dtype=torch.float16))
x = torch.randn(1, 3, 32, 32, device="cuda").half()
print("running", flush=True)
while True:
    fn(x)
"""


@pytest.mark.gpu
@on_cuda
def test_a_fresh_build_after_a_killed_process_starts_clean():
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD.format(lib=str(LIB))], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "running"
    finally:
        child.kill()  # SIGKILL in the middle of back-to-back launches
        child.wait(timeout=60)
    model = random_fastnet(*F1).cuda()
    fn, _ = build(model, "megakernel", torch.zeros(1, 3, 32, 32, device="cuda", dtype=torch.float16))
    worst, agree, _, _ = _parity(fn, model, fn.packed, False, n=200)
    assert worst <= TOLERANCE and agree >= 0.99


@pytest.mark.gpu
@on_cuda
def test_layer_timing_reads_increasing_stamps():
    from fastcifar.core.kernels import layer_timing

    rows = layer_timing(random_fastnet(*F1).cuda(), torch.zeros(1, 3, 32, 32, device="cuda"), calls=20)
    ats = [r["at_us"] for r in rows]
    assert ats == sorted(ats) and ats[-1] > 0 and len(rows) == 2 * 6 + 4


# ---------------------------------------------------------------- the benchmark's pieces on the CPU

class _FakeVariant:
    def __init__(self, fn):
        self.fn = fn

    def prepare(self, x):
        return x

    def __call__(self, x):
        return self.fn(x)


def test_bench_parity_measures_error_and_agreement():
    from fastcifar.series.kernel_bench import parity

    want = torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.01, 0.0], [0.0, 2.0, 5.0]])
    xs = torch.arange(3.0).view(3, 1, 1, 1)

    def off_by(x):  # exact on rows 0 and 2, flips the near-tie of row 1
        i = int(x.item())
        return (want[i] + torch.tensor([0.02, 0.0, 0.0]) if i == 1 else want[i]).unsqueeze(0)

    got = parity(_FakeVariant(off_by), xs, want, tolerance=0.02)
    assert got["argmax_agree"] == pytest.approx(2 / 3)
    assert got["decisive_inputs"] == 2 and got["decisive_argmax_agree"] == 1.0
    assert got["max_rel_err"] == pytest.approx(0.02 / 1.01)
    assert got["within_tolerance"]


def test_bench_needs_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only refusal")
    from fastcifar.series.kernel_bench import main

    assert main(["--out", str(tmp_path)]) == 2
    assert "CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_bench_table_prints_failed_rows(capsys):
    from fastcifar.series.kernel_bench import print_table

    print_table([{"network": "n", "mirror": False, "path": "megakernel graph", "status": "failed"},
                 {"network": "n", "mirror": True, "path": "p", "status": "ok", "host_p95_ms": 0.0321}])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "failed" in out[1] and "0.0321" in out[2]


def test_output_buffers_of_the_wrong_kind_are_refused():
    with pytest.raises(ValueError, match="float32"):
        megakernel.output_buffers((torch.zeros(1, 10, dtype=torch.float16), torch.zeros(1, dtype=torch.int32)), 10, "cpu")
    with pytest.raises(ValueError, match=r"\(1,\)"):
        megakernel.output_buffers((torch.zeros(1, 10), torch.zeros(2, dtype=torch.int32)), 10, "cpu")
    with pytest.raises(ValueError, match="pinned host memory"):  # plain host memory: the kernel cannot write it
        megakernel.output_buffers((torch.zeros(1, 10), torch.zeros(1, dtype=torch.int32)), 10, torch.device("meta"))


def test_nvrtc_writes_into_new_buffers_never_into_pythons_shared_bytes():
    # NVRTC writes a log of size 1 (an empty log's zero) into the buffer it is given: b" " * 1 would be
    # Python's shared b" ", and zeroing it turned the spaces of every later print into NULs.
    from fastcifar.core.kernels.megakernel import _out_buffer

    for size in (0, 1, 2, 100):
        first, second = _out_buffer(size), _out_buffer(size)
        assert len(first) >= size and first is not second and first is not b" " and first is not b"\0"


def test_kernel_args_hold_each_pointer_then_their_addresses():
    import ctypes

    args = megakernel.kernel_args(0, 64, 128)
    assert [a.value for a in args[:3]] == [None, 64, 128]  # c_void_p(0) reads back as None
    assert list(args[3]) == [ctypes.addressof(a) for a in args[:3]]


def test_the_megakernels_refuse_a_cpu_device_with_the_reason():
    with pytest.raises(megakernel.MegakernelError, match="runs on a CUDA device"):
        megakernel.hopper_arch(torch.device("cpu"), "thread-block clusters")

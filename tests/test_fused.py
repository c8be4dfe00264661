"""Fused FastNet kernels: the packed layout and the PyTorch reference against the model on the CPU,
the Triton kernels under TRITON_INTERPRET=1 (in a subprocess, since Triton reads that variable on
import) against the reference, and, on a CUDA machine (marker `gpu`), the kernels themselves."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastcifar.core.kernels import KERNEL_TOLERANCE, TOLERANCE, build, pack, reference
from fastcifar.core.kernels.samples import random_fastnet

LIB = Path(__file__).resolve().parents[1] / "lib"
on_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def model_logits(model, x, mirror):
    """FP32 logits of the model (true FP32 on CUDA: TF32 convolutions off), mirror averaged."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            out = model(x)
            return (out + model(x.flip(3))) / 2 if mirror else out
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def relative_error(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


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
    assert layer.weight.shape[0] % layer.block_k == 0 and layer.weight.shape[1] % layer.block_n == 0
    assert not layer.weight[layer.k:].any() and not layer.weight[:, layer.c_out:].any()
    assert [l.h_out for l in packed.layers] == [31] + [h for h in (15, 7, 3) for _ in range(convs)]
    skips = [l.skip for l in packed.layers]
    assert skips == ([None] * 7 if convs == 2 else [None, None, None, 1, None, None, 4, None, None, 7])
    assert packed.activations[0].shape == (1, 31, 31, 24) and packed.activations[0].dtype == torch.float16
    assert pack(model, mirror=True).activations[-1].shape == (2, 3, 3, 24)


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


def test_build_needs_cuda_and_a_known_backend():
    model = random_fastnet((16, 16, 16), 2)
    with pytest.raises(ValueError, match="backend"):
        build(model, "fused-nothing", torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="CUDA"):
        build(model, "fused-layers", torch.zeros(1, 3, 32, 32))


def test_max_block_k_takes_fewer_larger_k_steps_only_where_channels_allow():
    from fastcifar.core.kernels.pack import tile_sizes

    assert tile_sizes(9, 512, 512)[2] == 64  # the default keeps steps of 64
    assert tile_sizes(9, 512, 512, max_block_k=256)[2] == 256
    assert tile_sizes(9, 384, 512, max_block_k=512)[2] == 256  # never more than the channels
    assert tile_sizes(225, 32, 64, max_block_k=256)[2] == 32  # narrow layers keep their steps
    for bad in (32, 96):
        with pytest.raises(ValueError, match="power of two >= 64"):
            tile_sizes(9, 512, 512, max_block_k=bad)
    model = random_fastnet((16, 128, 128), 2)
    packed = pack(model, max_block_k=128)
    assert [l.block_k for l in packed.layers if l.c_in >= 128] == [128, 128, 128]
    assert all(l.k_pad % l.block_k == 0 and l.k_pad >= l.k for l in packed.layers)
    x = torch.randn(1, 3, 32, 32)
    assert relative_error(reference(packed, x), model_logits(model, x, False)) <= TOLERANCE


class _FakeKernel:
    """What resources() reads of a Triton CompiledKernel: metadata.shared, and n_regs / n_spills once
    _init_handles has loaded the binary."""

    def __init__(self, name, regs, spills, shared):
        self.name, self._loaded = name, (regs, spills)
        self.metadata = type("Metadata", (), {"shared": shared})()

    def _init_handles(self):
        self.n_regs, self.n_spills = self._loaded


def test_resources_read_each_launched_kernel():
    from fastcifar.core.kernels import resources, resources_text

    fn = lambda x: x  # noqa: E731
    fn.compiled = [_FakeKernel("layer", 96, 0, 8192), None, _FakeKernel("head", 40, 16, 1024)]
    rows = resources(fn)
    assert [(r["name"], r["n_regs"], r["n_spills"], r["shared_bytes"]) for r in rows] == [
        ("layer", 96, 0, 8192), ("head", 40, 16, 1024)]
    text = resources_text(rows)
    assert "2 kernel(s)" in text and "max 96" in text and "spills 16" in text and "8192 bytes" in text
    assert resources(lambda x: x) == [] and resources_text([]) == "kernel resources unknown"


def test_build_refuses_a_bad_num_stages():
    with pytest.raises(ValueError, match="num_stages must be >= 1"):
        build(random_fastnet((16, 16, 16), 2), "fused-layers", torch.zeros(1, 3, 32, 32), num_stages=0)


def test_pack_refuses_other_models():
    with pytest.raises(TypeError, match="FastNet"):
        pack(torch.nn.Linear(3, 10))


def _barrier_round(counter: np.int32, nprog: int, order: list[int]) -> tuple[np.int32, list[int]]:
    """The arithmetic of kernels.grid_barrier, in int32: returns the final counter and, for each
    arrival, whether the waiters' condition (top bit changed since their own arrival) holds then."""
    olds, released_at = {}, []
    for step, pid in enumerate(order):
        inc = np.int32((2147483647 - nprog) + 2) if pid == 0 else np.int32(1)
        with np.errstate(over="ignore"):
            olds[pid], counter = counter, np.int32(counter + inc)
        released_at.append(all((int(counter) ^ int(olds[p])) < 0 for p in olds))
    return counter, released_at


@pytest.mark.parametrize("nprog", [2, 3, 132])
def test_grid_barrier_counter_flips_only_when_all_arrived(nprog):
    rng = np.random.default_rng(nprog)
    counter = np.int32(0)
    for _ in range(25):  # many barriers in a row, as in repeated calls and graph replays
        order = list(rng.permutation(nprog))
        before = counter
        counter, released = _barrier_round(counter, nprog, order)
        assert released == [False] * (nprog - 1) + [True]
        assert (int(counter) ^ int(before)) & 0x7FFFFFFF == 0  # low bits back where they were
        assert (int(counter) ^ int(before)) < 0  # top bit flipped


def _interpret(*args: str) -> list[dict]:
    pytest.importorskip("triton")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LIB), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "fastcifar.core.kernels.interpret_check", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return lines


@pytest.mark.parametrize("args", [["--convs", "2", "--widths", "16", "32", "32", "--seeds", "2"],
                                  ["--convs", "3", "--widths", "16", "16", "16", "--mirror", "--seeds", "1"],
                                  # the largest tiles: several channel blocks, block_n 32 and 64
                                  ["--convs", "3", "--widths", "16", "32", "64", "--mirror", "--seeds", "1",
                                   "--target-tiles", "1"],
                                  # K steps of 128 (max_block_k) on the 128-channel inputs
                                  ["--convs", "2", "--widths", "16", "128", "128", "--seeds", "1",
                                   "--target-tiles", "1", "--max-block-k", "128"]])
def test_triton_kernels_under_the_interpreter_match_the_reference(args):
    rows = _interpret(*args)
    assert {r["backend"] for r in rows if "backend" in r} == {"fused-layers", "fused-persistent"}
    assert [r["refuses_float32"] for r in rows if "refuses_float32" in r] == [True, True]
    assert [r["counter"] for r in rows if "barrier_rounds" in r] == [0]  # a 1-program barrier passes
    rows = [r for r in rows if "seed" in r]
    assert len(rows) == 2 * int(args[args.index("--seeds") + 1])
    for r in rows:
        assert r["shape"] == [1, 10] and r["max_ref"] > 0 and r["rel"] <= KERNEL_TOLERANCE, r


# ---------------------------------------------------------------- on the GPU

GPU_SHAPES = [((32, 64, 128), 2), ((64, 128, 256), 3)]


def _parity(fn, model, packed, mirror, n=1000):
    """Worst relative error and argmax agreements of fn against the FP32 model (and the reference)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    xs = torch.randn(n, 3, 32, 32, generator=gen).cuda()
    want = model_logits(model, xs, mirror)
    worst, agree, decisive, decisive_agree = 0.0, 0, 0, 0
    for i in range(n):
        x = xs[i:i + 1]
        got = fn(x.half()).clone()
        assert relative_error(got, reference(packed, x)) <= KERNEL_TOLERANCE
        err = relative_error(got[0], want[i])
        worst = max(worst, err)
        same = bool(got[0].argmax() == want[i].argmax())
        agree += same
        top2 = want[i].topk(2).values
        if (top2[0] - top2[1]) > 2 * TOLERANCE * want[i].abs().max():  # a flip would exceed the tolerance
            decisive += 1
            decisive_agree += same
    return worst, agree / n, decisive_agree / max(decisive, 1), decisive


@pytest.mark.gpu
@on_cuda
@pytest.mark.parametrize("backend", ["fused-layers", "fused-persistent"])
@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("widths,convs", GPU_SHAPES)
def test_fused_matches_fp32_model_on_cuda(backend, mirror, widths, convs):
    model = random_fastnet(widths, convs).cuda()
    fn, notes = build(model, backend, torch.zeros(1, 3, 32, 32, device="cuda", dtype=torch.float16), mirror=mirror)
    worst, agree, decisive_agree, decisive = _parity(fn, model, fn.packed, mirror)
    assert worst <= TOLERANCE, (worst, notes)
    # Random weights leave some near-ties that FP16 may flip within the tolerance; decisions whose
    # top-2 margin exceeds twice the tolerance must all agree, and all inputs on >= 99% here (the
    # 99.9% bar of the task is for trained networks, checked by the benchmark's --checkpoint run).
    assert decisive > 500 and decisive_agree >= 0.999, (decisive, decisive_agree)
    assert agree >= 0.99, agree


@pytest.mark.gpu
@on_cuda
@pytest.mark.parametrize("backend", ["fused-layers", "fused-persistent"])
def test_fused_runs_inside_a_cuda_graph_replayed_many_times(backend):
    from fastcifar.core.optimize import Spec
    from fastcifar.core.optimize import build as build_variant

    model = random_fastnet((32, 64, 128), 3).cuda()
    example = torch.randn(1, 3, 32, 32, device="cuda")
    variant = build_variant(model, Spec(precision="fp16", cuda_graph=True, mirror=True, backend=backend), example)
    direct, _ = build(model, backend, example.half(), mirror=True)
    xs = torch.randn(50, 1, 3, 32, 32, device="cuda").half()
    expected = [direct(x).clone() for x in xs]
    for rep in range(20):  # 1,000 replays: the barrier counter must come back ready every time
        for x, want in zip(xs, expected):
            got = variant(x)
            assert torch.allclose(got, want, rtol=1e-3, atol=1e-4), (rep, got, want)
    if backend == "fused-persistent":
        torch.cuda.synchronize()
        assert direct.sync.item() & 0x7FFFFFFF == 0  # low bits at rest between calls


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

    print_table([{"network": "n", "mirror": False, "path": "fused-layers graph", "status": "failed"},
                 {"network": "n", "mirror": True, "path": "p", "status": "ok", "host_p95_ms": 0.0321}])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "failed" in out[1] and "0.0321" in out[2]


def test_bench_runs_the_persistent_kernel_last():
    from fastcifar.series.kernel_bench import PATHS, plan

    order = plan(["a", "b"], list(PATHS))
    assert len(order) == 2 * 2 * len(PATHS)
    kinds = ["persistent" in p for _, _, p in order]
    assert kinds == sorted(kinds)  # every other path of every network first
    assert {(n, m) for n, m, p in order if "persistent" in p} == {("a", False), ("a", True), ("b", False), ("b", True)}


def test_bench_tuning_rows_name_their_backend_and_knob():
    from fastcifar.series.kernel_bench import BLOCK_K_PATH, PROGRAMS_PATH, STAGES_PATH, TILES_PATH, plan, tuning_knob

    assert tuning_knob(PROGRAMS_PATH.format(16)) == ("fused-persistent", "programs", 16)
    assert tuning_knob(BLOCK_K_PATH.format("fused-layers", 128)) == ("fused-layers", "max_block_k", 128)
    assert tuning_knob(TILES_PATH.format("fused-persistent", 32)) == ("fused-persistent", "target_tiles", 32)
    assert tuning_knob(STAGES_PATH.format("fused-layers", 4)) == ("fused-layers", "num_stages", 4)
    paths = [BLOCK_K_PATH.format("fused-persistent", 128), BLOCK_K_PATH.format("fused-layers", 128)]
    assert [p for _, _, p in plan(["a"], paths)][-1].startswith("fused-persistent")

"""The GPU code paths, on CUDA: every kind of optimize.Spec against eager FP32, the benchmark, the export.

Marked `gpu`; skipped without CUDA. `make test-gpu` runs them on a CUDA machine and writes
outputs/gpu_tests/report.json and report.xml. FastNet's megakernel (Spec.backend "megakernel") has its
own tests in test_kernels.py, also marked `gpu`.

Tolerances, relative to the largest reference logit: FP32 paths 1e-3 (TF32 is switched off here, so
what remains is summation order: folded BN, other convolution algorithms); FP16 paths
2e-2 (FP16 keeps 11 significant bits; errors add up over the layers of an untrained network).
"""
from __future__ import annotations

import pytest
import torch

from fastcifar.core import bench, models, optimize
from fastcifar.core.optimize import Spec

CUDA = torch.cuda.is_available()


def on_gpu(test):
    """Mark a test `gpu` and skip it without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (make test-gpu on a CUDA machine)")(test))


FP32_TOL, FP16_TOL = 1e-3, 2e-2

SPECS = {
    "fp32": Spec(),
    "fp16": Spec("fp16"),
    "fp16-autocast": Spec("fp16-autocast"),
    "channels_last": Spec(channels_last=True),
    "fp16+channels_last": Spec("fp16", channels_last=True),
    "fold_bn": Spec(fold_bn=True),
    "fp16+channels_last+fold_bn": Spec("fp16", channels_last=True, fold_bn=True),
    "cuda_graph": Spec(cuda_graph=True),
    "fp16+fold_bn+cuda_graph": Spec("fp16", fold_bn=True, cuda_graph=True),
    "mirror": Spec(mirror=True),
    "fp16+cuda_graph+mirror": Spec("fp16", cuda_graph=True, mirror=True),
}
# One spec per compile mode (max-autotune tunes kernels for minutes: once is enough).
COMPILE_SPECS = {
    "compile-default": Spec(compile_mode="default"),
    "fp16+compile-default+cuda_graph": Spec("fp16", compile_mode="default", cuda_graph=True),
    "fp16+compile-reduce-overhead": Spec("fp16", compile_mode="reduce-overhead"),
    "fp16+fold_bn+compile-max-autotune-no-cudagraphs+cuda_graph":
        Spec("fp16", fold_bn=True, compile_mode="max-autotune-no-cudagraphs", cuda_graph=True),
}
SMALL_MODELS = {
    "resnet18": lambda: models.build_model("resnet18"),
    "mobilenet_v3_small": lambda: models.build_model("mobilenet_v3_small"),
    "fastnet": lambda: models.build_model("fastnet", widths=(16, 32, 32)),
}


@pytest.fixture(autouse=True)
def exact_fp32():
    """FP32 references without TF32, so that FP32 tolerances can be tight."""
    if not CUDA:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    torch.cuda.empty_cache()


def with_bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Untrained BatchNorms are identities; give them statistics so that folding is really tested."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if m.weight.requires_grad:  # FastNet's BN scale stays 1
                m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def reference(model: torch.nn.Module, x: torch.Tensor, mirror: bool) -> torch.Tensor:
    with torch.inference_mode():
        out = model(x).float()
        return (out + model(x.flip(3)).float()) / 2 if mirror else out


def outputs(variant: optimize.Variant, x: torch.Tensor) -> torch.Tensor:
    """Static-shape variants are called as they are timed, one image at a time."""
    with torch.inference_mode():
        if variant.spec.static_shape:
            # a graphed variant returns its own output buffer, overwritten by the next call: keep copies
            return torch.cat([variant(variant.prepare(x[i:i + 1])).float().clone() for i in range(len(x))])
        return variant(variant.prepare(x)).float()


def check_variant(model: torch.nn.Module, spec: Spec, x: torch.Tensor) -> float:
    """Build `spec` on x's device, check that it did what the spec says and that its outputs match eager
    FP32 within the tolerance of its precision; returns the relative error."""
    model = model.to(x.device)
    variant = optimize.build(model, spec, x[:1])
    if spec.precision == "fp16":
        assert variant.input_dtype == torch.float16
        assert all(p.dtype == torch.float16 for p in variant.module.parameters())
    if spec.channels_last:
        conv = next(m for m in variant.module.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert variant.prepare(x).is_contiguous(memory_format=torch.channels_last)
    if spec.fold_bn:
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in variant.module.modules())
    if spec.cuda_graph:
        assert hasattr(variant.fn, "graph")
    if spec.compile_mode:
        assert variant.compile_s is not None and not any("fell back" in n for n in variant.notes), variant.notes
    out, ref = outputs(variant, x), reference(model, x, spec.mirror)
    assert out.shape == ref.shape and out.device == ref.device
    error = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
    tolerance = FP16_TOL if spec.precision != "fp32" else FP32_TOL
    assert error < tolerance, f"{spec.label}: relative error {error:.2e} over {tolerance:g}"
    return error


@on_gpu
@pytest.mark.parametrize("spec_id", list(SPECS))
@pytest.mark.parametrize("model_name", list(SMALL_MODELS))
def test_every_spec_matches_eager_fp32(model_name, spec_id):
    torch.manual_seed(0)
    model = with_bn_statistics(SMALL_MODELS[model_name]())
    check_variant(model, SPECS[spec_id], torch.randn(4, 3, 32, 32, device="cuda"))


@on_gpu
@pytest.mark.parametrize("spec_id", list(COMPILE_SPECS))
def test_compiled_specs_match_eager_fp32(spec_id):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = with_bn_statistics(SMALL_MODELS["fastnet"]())
    check_variant(model, COMPILE_SPECS[spec_id], torch.randn(3, 3, 32, 32, device="cuda"))


@on_gpu
def test_reduce_overhead_on_resnet18():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = with_bn_statistics(models.build_model("resnet18"))
    check_variant(model, Spec("fp16", channels_last=True, compile_mode="reduce-overhead"),
                  torch.randn(2, 3, 32, 32, device="cuda"))


@on_gpu
def test_accuracy_path_matches_for_graph_and_eager_variants():
    """optimize.accuracy calls static-shape variants image by image, eager ones in batches: same answer
    (one image of 64 may flip where two logits of the untrained model nearly tie)."""
    torch.manual_seed(0)
    model = with_bn_statistics(SMALL_MODELS["fastnet"]()).cuda()
    x = torch.randn(64, 3, 32, 32, device="cuda")
    labels = reference(model, x, False).argmax(1)
    for spec in (Spec(), Spec(cuda_graph=True), Spec(fold_bn=True, cuda_graph=True)):
        assert optimize.accuracy(optimize.build(model, spec, x[:1]), x, labels) >= 100.0 * 63 / 64, spec.label


# ---------------------------------------------------------------- benchmark on CUDA

@on_gpu
def test_benchmark_latency_on_cuda_for_module_variant_and_function():
    model = with_bn_statistics(SMALL_MODELS["fastnet"]()).cuda()
    x = torch.randn(1, 3, 32, 32, device="cuda")
    variant = optimize.build(model, Spec("fp16", cuda_graph=True), x)
    for subject, inputs in ((model, x), (variant, variant.prepare(x)), (lambda t: model(t), x)):
        res = bench.benchmark_latency(subject, inputs, warmup_iters=5, measure_iters=30)
        assert res.gpu is not None and res.host.n == 30 and res.gpu.n == 30
        assert 0 < res.host.min <= res.host.p95 and 0 < res.gpu.min
        row = res.row()
        assert row["batch"] == 1 and row["gpu_p95_ms"] > 0


@on_gpu
def test_benchmark_refuses_cpu_inputs_for_a_cuda_variant_or_function():
    model = with_bn_statistics(SMALL_MODELS["fastnet"]()).cuda()
    variant = optimize.build(model, Spec(), torch.randn(1, 3, 32, 32, device="cuda"))
    for subject in (variant, lambda t: model(t)):
        with pytest.raises(ValueError, match="model is on cuda"):
            bench.benchmark_latency(subject, torch.randn(1, 3, 32, 32), 1, 1)


@on_gpu
def test_launch_floor_on_cuda():
    floor = bench.launch_floor("cuda", warmup_iters=10, measure_iters=50)
    assert set(floor) == {bench.FLOOR_EAGER, bench.FLOOR_GRAPH, bench.FLOOR_DEVICE_SYNC, bench.FLOOR_EVENT}
    assert all(r.host.n == 50 and r.host.min > 0 for r in floor.values())


@on_gpu
def test_sweep_on_cuda_measures_every_spec():
    model = with_bn_statistics(SMALL_MODELS["fastnet"]()).cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.arange(8, device="cuda") % 10
    specs = {"ref": Spec(), "half": Spec("fp16"), "graph": Spec("fp16", fold_bn=True, cuda_graph=True)}
    df, samples = optimize.measure_specs(model, "fastnet", specs, (x, y), (x, y), 3, 10, {"profile": "gpu-test"})
    assert set(samples) == set(specs) and df.lat_p95_ms.notna().all() and df.gpu_p95_ms.notna().all()
    assert df.speedup.iloc[0] == pytest.approx(1.0)


# ---------------------------------------------------------------- export from a CUDA model

@on_gpu
def test_export_from_a_cuda_model_with_mirror(tmp_path):
    pytest.importorskip("onnxruntime")
    from fastcifar.core import data, engine
    from fastcifar.series import export

    model = with_bn_statistics(SMALL_MODELS["fastnet"]()).cuda()
    spec = Spec("fp16", cuda_graph=True, mirror=True)
    info = export.export_final(model, "fastnet", 10, tmp_path, torch.randn(8, 3, 32, 32, device="cuda"), spec=spec,
                               mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD, classes=[str(i) for i in range(10)])
    assert info["exported"] and info["parity_ok"] and info["mirror_in_onnx"]
    assert next(model.parameters()).is_cuda  # the caller's model stays on the GPU
    loaded, ckpt = engine.load_model(tmp_path / "final_model.pt", device="cuda")
    x = torch.randn(2, 3, 32, 32, device="cuda")
    with torch.inference_mode():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    assert Spec.from_dict(ckpt["spec"]) == spec


# ---------------------------------------------------------------- the checks above, on the CPU

@pytest.mark.parametrize("spec", [Spec(), Spec(channels_last=True), Spec(fold_bn=True), Spec(mirror=True)],
                         ids=lambda s: s.label)
def test_check_variant_itself_on_cpu(spec, monkeypatch):
    """The helper the GPU tests rely on, run on the CPU paths: it must pass correct variants and catch a
    wrong one (here: outputs one percent off)."""
    torch.manual_seed(0)
    model = with_bn_statistics(SMALL_MODELS["fastnet"]())
    assert check_variant(model, spec, torch.randn(3, 3, 32, 32)) < FP32_TOL
    variant = optimize.build(model, spec, torch.randn(1, 3, 32, 32))
    wrong = lambda x, _m=variant.module: _m(x) * 1.01  # noqa: E731
    variant.fn = optimize.with_mirror(wrong) if spec.mirror else wrong
    monkeypatch.setattr(optimize, "build", lambda *args, **kwargs: variant)
    with pytest.raises(AssertionError, match="relative error"):
        check_variant(model, spec, torch.randn(3, 3, 32, 32))

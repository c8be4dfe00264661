import numpy as np
import pytest
import torch

from fastcifar.core import models, optimize
from fastcifar.core.optimize import Spec, Unavailable

def cuda(test):
    """A GPU test: marked `gpu` (make test-gpu) and skipped without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def with_bn_statistics(model):
    """Untrained BatchNorms are identities; give them statistics so folding is really tested."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name,expected", [("resnet18", 20), ("mobilenet_v3_small", 34), ("shufflenet_v2", 56)])
def test_batchnorm_folding_keeps_the_function(name, expected):
    model = with_bn_statistics(models.build_model(name))
    folded = optimize.fold_batchnorm(model)
    assert folded.folded_batchnorms == expected
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    assert torch.allclose(ref, out, atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_spec_validation_and_labels():
    with pytest.raises(ValueError, match="precision"):
        Spec("int8")
    with pytest.raises(ValueError, match="compile_mode"):
        Spec(compile_mode="fast")
    with pytest.raises(ValueError, match="already captures"):
        Spec(compile_mode="reduce-overhead", cuda_graph=True)
    spec = Spec("fp16", channels_last=True, fold_bn=True, compile_mode="max-autotune-no-cudagraphs", cuda_graph=True)
    assert spec.label == "FP16 + channels_last + BN folded + compile(max-autotune-no-cudagraphs) + CUDA graph"
    assert Spec("fp16-autocast").label == "FP16 autocast"
    assert spec.static_shape and not Spec("fp16").static_shape
    assert Spec.from_dict(spec.to_dict()) == spec


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks")
@pytest.mark.parametrize("spec", [Spec("fp16"), Spec("fp16-autocast"), Spec(cuda_graph=True), Spec(compile_mode="default")])
def test_gpu_paths_are_unavailable_on_cpu(spec):
    with pytest.raises(Unavailable):
        optimize.build(models.build_model("shufflenet_v2"), spec, torch.randn(1, 3, 32, 32), allow_compile=False)


def test_cpu_variants_compute_the_same_predictions():
    model = with_bn_statistics(models.build_model("shufflenet_v2"))
    x = torch.randn(12, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x).argmax(1)
    for spec in (Spec(), Spec(channels_last=True), Spec(fold_bn=True)):
        variant = optimize.build(model, spec, x[:1])
        assert torch.equal(optimize.predictions(variant, x, batch_size=5), ref), spec.label
        assert variant.prepare(x).is_contiguous(memory_format=variant.memory_format)


def data(n=20):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10


def test_sweep_rows_speedup_and_skips():
    model = models.build_model("mobilenet_v3_small")
    specs = {"ref": Spec(), "cl": Spec(channels_last=True), "half": Spec("fp16")}
    df, samples = optimize.measure_specs(model, "mobilenet_v3_small", specs, data(), data(), 1, 3, {"profile": "smoke"})
    assert list(df.id) == ["ref", "cl", "half"]
    assert df.speedup.iloc[0] == pytest.approx(1.0)
    assert set(samples) == ({"ref", "cl"} if not torch.cuda.is_available() else {"ref", "cl", "half"})
    if not torch.cuda.is_available():
        assert df.notes.iloc[2].startswith("skipped:") and np.isnan(df.lat_p95_ms.iloc[2])
    assert (df.profile == "smoke").all() and df.variant.iloc[1].endswith("FP32 + channels_last")


def test_remeasure_interleaves_runs():
    model = models.build_model("shufflenet_v2")
    entries = [{"id": "a", "variant": "A", "model_name": "shufflenet_v2", "model": model, "spec": Spec()},
               {"id": "b", "variant": "B", "model_name": "shufflenet_v2", "model": model, "spec": Spec(fold_bn=True)}]
    df, samples = optimize.remeasure(entries, data(), data(), 3, 1, 2, {})
    assert list(zip(df.id, df.run)) == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    assert len(samples["a"]) == 2 and (df.accuracy.groupby(df.id).nunique() == 1).all()


@cuda
@pytest.mark.parametrize("spec", [Spec("fp16"), Spec("fp16-autocast"), Spec("fp16", fold_bn=True, cuda_graph=True),
                                  Spec(cuda_graph=True)])
def test_gpu_variants_agree_with_fp32(spec):
    model = with_bn_statistics(models.build_model("resnet18")).cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.inference_mode():
        ref = model(x).float()
    variant = optimize.build(model, spec, x[:1])
    # a graphed variant returns its own output buffer, overwritten by the next call: keep a copy of each
    out = torch.cat([variant(variant.prepare(x[i:i + 1])).float().clone() for i in range(4)])
    assert torch.allclose(out, ref, atol=5e-2, rtol=5e-2)


def test_folding_uses_torchs_fuse_conv_bn_eval_arithmetic():
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = with_bn_statistics(models.build_model("resnet18"))
    folded = optimize.fold_batchnorm(model)
    expected = fuse_conv_bn_eval(model.conv1, model.bn1)
    assert torch.equal(folded.conv1.weight, expected.weight) and torch.equal(folded.conv1.bias, expected.bias)
    assert folded.conv1 is not model.conv1 and model.conv1.bias is None  # the original is untouched


def test_fold_batchnorm_delegates_to_models_that_fold_themselves():
    model = with_bn_statistics(models.build_model("fastnet", widths=(8, 16, 16)))
    folded = optimize.fold_batchnorm(model)
    assert isinstance(folded, models.FastNet) and folded.folded_batchnorms == 6
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_result_columns_stay_numeric():
    """No "" in number columns: a skipped variant and a variant without compile time give NaN."""
    import pandas as pd

    from fastcifar.core import bench

    model = models.build_model("shufflenet_v2")
    _, row = optimize.evaluated(model, Spec(), data(4), data(4))
    assert isinstance(row["compile_s"], float) and np.isnan(row["compile_s"])
    df, _ = optimize.measure_specs(model, "shufflenet_v2", {"ref": Spec(), "half": Spec("fp16")}, data(4), data(4), 0, 2, {})
    for column in bench.NUMERIC_COLUMNS:
        assert pd.api.types.is_numeric_dtype(df[column]), column

import pytest
import torch

from fastcifar.core import models


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_forward_shape_and_size(name):
    model = models.build_model(name).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert models.count_params(model) > 100_000
    assert models.size_mb(model) > models.count_params(model) * 4 / 1e6 * 0.99  # fp32 weights at least


def test_resnet18_cifar_is_adapted():
    model = models.resnet18_cifar()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert 11_000_000 < models.count_params(model) < 11_300_000  # ~11M (J3-11)


def test_cifar_stems_keep_more_resolution():
    def final_map(model):
        feats = model.features if hasattr(model, "features") else torch.nn.Sequential(
            model.conv1, model.maxpool, model.stage2, model.stage3, model.stage4, model.conv5)
        with torch.inference_mode():
            return feats.eval()(torch.randn(1, 3, 32, 32)).shape[-1]

    assert final_map(models.build_model("mobilenet_v3_small")) == 4
    assert final_map(models.build_model("mobilenet_v3_small_imagenet_stem")) == 1
    assert final_map(models.build_model("shufflenet_v2")) == 4
    assert final_map(models.build_model("shufflenet_v2_imagenet_stem")) == 1


def test_num_classes_and_unknown_name():
    assert models.build_model("resnet18", num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(ValueError, match="choose one of"):
        models.build_model("vgg")


def test_half_precision_halves_size():
    model = models.build_model("shufflenet_v2")
    full = models.size_mb(model)
    assert models.size_mb(model.half()) == pytest.approx(full / 2, rel=0.05)

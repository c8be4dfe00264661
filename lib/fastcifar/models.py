"""The models of the sprint: ResNet-18 adapted to CIFAR (teacher) and two light models.

ImageNet stems divide the image by 4 in their first layers (MobileNetV3-Small: a stride-2 stem conv and a
stride-2 first block; ShuffleNetV2: a stride-2 conv and a max-pool); on a 32x32 CIFAR image that leaves
8x8 maps early and 1x1 at the end. The CIFAR versions keep stride 1 there, so the network ends on 4x4.
J2 measures what that buys (accuracy) and costs (latency).
"""
from __future__ import annotations

import io

import torch
from torch import nn


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-18, first conv 3x3 stride 1 padding 1, no initial max-pool, untrained (J3-01)."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def mobilenet_v3_small(num_classes: int = 10, cifar_stem: bool = True) -> nn.Module:
    from torchvision.models import mobilenet_v3_small as tv_model

    model = tv_model(weights=None, num_classes=num_classes)
    if cifar_stem:
        model.features[0][0].stride = (1, 1)  # stem conv
        model.features[1].block[0][0].stride = (1, 1)  # first block's depthwise conv (no residual there)
    return model


def shufflenet_v2(num_classes: int = 10, cifar_stem: bool = True) -> nn.Module:
    from torchvision.models import shufflenet_v2_x1_0

    model = shufflenet_v2_x1_0(weights=None, num_classes=num_classes)
    if cifar_stem:
        model.conv1[0].stride = (1, 1)
        model.maxpool = nn.Identity()
    return model


MODELS = {
    "resnet18": resnet18_cifar,
    "mobilenet_v3_small": lambda num_classes=10: mobilenet_v3_small(num_classes, cifar_stem=True),
    "mobilenet_v3_small_imagenet_stem": lambda num_classes=10: mobilenet_v3_small(num_classes, cifar_stem=False),
    "shufflenet_v2": lambda num_classes=10: shufflenet_v2(num_classes, cifar_stem=True),
    "shufflenet_v2_imagenet_stem": lambda num_classes=10: shufflenet_v2(num_classes, cifar_stem=False),
}

LABELS = {
    "resnet18": "ResNet-18 CIFAR",
    "mobilenet_v3_small": "MobileNetV3-Small (CIFAR stem)",
    "mobilenet_v3_small_imagenet_stem": "MobileNetV3-Small (ImageNet stem)",
    "shufflenet_v2": "ShuffleNetV2 x1.0 (CIFAR stem)",
    "shufflenet_v2_imagenet_stem": "ShuffleNetV2 x1.0 (ImageNet stem)",
}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    """Size of the saved state_dict in MB (10^6 bytes), in the model's current dtype."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6

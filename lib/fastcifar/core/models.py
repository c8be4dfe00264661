"""The models of the sprint: ResNet-18 adapted to CIFAR (teacher) and two light models.

ImageNet stems divide the image by 4 in their first layers (MobileNetV3-Small: a stride-2 stem conv and a
stride-2 first block; ShuffleNetV2: a stride-2 conv and a max-pool); on a 32x32 CIFAR image that leaves
8x8 maps early and 1x1 at the end. The CIFAR versions keep stride 1 there, so the network ends on 4x4.
J2 measures what that buys (accuracy) and costs (latency).
"""
from __future__ import annotations

import copy
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


# ---------------------------------------------------------------- the latency-first family

class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1 (only the shift is learned). Its folded scale 1/sqrt(var + eps) is
    then always positive, so it commutes with the max-pool before it and folds into the conv."""

    def __init__(self, channels: int, momentum: float = 0.4, eps: float = 1e-5):
        super().__init__(channels, momentum=momentum, eps=eps)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    """conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU [-> conv3x3 -> BN -> GELU, + skip].

    With three convolutions the third one's output is added to the group's first activation."""

    def __init__(self, c_in: int, c_out: int, convs: int):
        super().__init__()
        if convs not in (2, 3):
            raise ValueError(f"a FastNet group has 2 or 3 convolutions, not {convs}")
        self.convs = nn.ModuleList(nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False)
                                   for i in range(convs))
        self.norms = nn.ModuleList(FrozenScaleBatchNorm(c_out) for _ in range(convs))
        self.pool = nn.MaxPool2d(2)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norms[0](self.pool(self.convs[0](x))))
        skip = x
        for conv, norm in zip(self.convs[1:], self.norms[1:]):
            x = self.act(norm(conv(x)))
        return x + skip if len(self.convs) == 3 else x


# FastNet's default architecture, for FastNet, `fastnet` and `fastnet_label` alike: the channels of the
# three groups and the convolutions per group. The series' own points are the sweep's (series.sweep).
FASTNET_WIDTHS = (64, 256, 256)
FASTNET_CONVS = 2


class FastNet(nn.Module):
    """Latency-first CIFAR network: a 2x2 patch-whitening conv (32 -> 31 pixels), three conv groups that
    each halve the map (31 -> 15 -> 7 -> 3), a global max-pool and a linear head scaled by `head_scale`.

    `widths` are the three groups' channels, `convs` the convolutions per group (2: plain, 3: with a
    residual). At batch 1 it runs few, wide kernels; its BatchNorms fold away (`fold_batchnorm`).
    """

    def __init__(self, num_classes: int = 10, widths=FASTNET_WIDTHS, convs: int = FASTNET_CONVS, whiten_width: int = 24,
                 head_scale: float = 1 / 9):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"FastNet needs three positive widths, got {widths}")
        self.arch = {"widths": list(widths), "convs": int(convs), "whiten_width": int(whiten_width),
                     "head_scale": float(head_scale)}
        self.whiten = nn.Conv2d(3, whiten_width, kernel_size=2, padding=0, bias=True)
        self.act = nn.GELU()
        ins = (whiten_width, *widths[:2])
        self.groups = nn.ModuleList(ConvGroup(i, o, convs) for i, o in zip(ins, widths))
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.head_scale = head_scale
        for group in self.groups:  # identity-like start: each conv first passes its inputs through
            for conv in group.convs:
                nn.init.dirac_(conv.weight[:conv.in_channels])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        for group in self.groups:
            x = group(x)
        return torch.amax(x, dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.head_scale

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the first conv to whiten 2x2 patches of `images` (normalised, N x 3 x 32 x 32): the patch
        covariance's eigenvectors scaled by 1/sqrt(eigenvalue), and their negatives (so that GELU keeps
        both signs). Its weights then stay frozen; its bias trains."""
        c = self.whiten.out_channels
        if c % 2 or c > 24:
            raise ValueError(f"patch whitening needs an even whiten_width of at most 24, not {c}")
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # N, 3, 31, 31, 2, 2
        patches = patches.transpose(1, 3).reshape(-1, 12)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigval, eigvec = torch.linalg.eigh(cov.double())
        order = eigval.argsort(descending=True)[: c // 2]
        filters = (eigvec[:, order].T / torch.sqrt(eigval[order] + eps)[:, None]).float()
        filters = filters.reshape(c // 2, 3, 2, 2)  # patches were flattened as (channel, kh, kw)
        w = torch.cat([filters, -filters]).to(self.whiten.weight)
        self.whiten.weight.copy_(w)
        self.whiten.weight.requires_grad_(False)

    @torch.no_grad()
    def fold_batchnorm(self) -> "FastNet":
        """A copy for inference: every BN folded into the conv before it (valid across the max-pool since
        the folded scale is positive), the head scale folded into the head. Same outputs in eval mode."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval  # the same arithmetic as optimize's folding

        folded = copy.deepcopy(self).eval()
        for group in folded.groups:
            for i, (conv, norm) in enumerate(zip(group.convs, group.norms)):
                if (norm.weight / torch.sqrt(norm.running_var + norm.eps) <= 0).any():
                    raise ValueError("a BatchNorm scale is not positive: it cannot fold across the max-pool")
                group.convs[i] = fuse_conv_bn_eval(conv, norm)
                group.norms[i] = nn.Identity()
        folded.head.weight.mul_(folded.head_scale)
        folded.head_scale = 1.0
        folded.folded_batchnorms = sum(len(g.convs) for g in self.groups)
        return folded


def fastnet(num_classes: int = 10, widths=FASTNET_WIDTHS, convs: int = FASTNET_CONVS, **arch) -> FastNet:
    return FastNet(num_classes, widths, convs, **arch)


def fastnet_label(arch: dict) -> str:
    w = "/".join(str(x) for x in arch.get("widths", FASTNET_WIDTHS))
    return f"FastNet {w} x{arch.get('convs', FASTNET_CONVS)}"


MODELS = {
    "resnet18": resnet18_cifar,
    "mobilenet_v3_small": lambda num_classes=10: mobilenet_v3_small(num_classes, cifar_stem=True),
    "mobilenet_v3_small_imagenet_stem": lambda num_classes=10: mobilenet_v3_small(num_classes, cifar_stem=False),
    "shufflenet_v2": lambda num_classes=10: shufflenet_v2(num_classes, cifar_stem=True),
    "shufflenet_v2_imagenet_stem": lambda num_classes=10: shufflenet_v2(num_classes, cifar_stem=False),
    "fastnet": fastnet,
    "resnet_custom": lambda num_classes=10, **arch: resnet_custom(num_classes, **arch),
}

LABELS = {
    "resnet18": "ResNet-18 CIFAR",
    "mobilenet_v3_small": "MobileNetV3-Small (CIFAR stem)",
    "mobilenet_v3_small_imagenet_stem": "MobileNetV3-Small (ImageNet stem)",
    "shufflenet_v2": "ShuffleNetV2 x1.0 (CIFAR stem)",
    "shufflenet_v2_imagenet_stem": "ShuffleNetV2 x1.0 (ImageNet stem)",
    "fastnet": "FastNet",
    "resnet_custom": "Custom ResNet (3 stages)",
}


def build_model(name: str, num_classes: int = 10, **arch) -> nn.Module:
    """Build a registered model. `arch` holds the architecture parameters of parametric families
    (FastNet's widths, ...); the model keeps them as `model.arch` so that a checkpoint can rebuild it."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    try:
        return MODELS[name](num_classes=num_classes, **arch)
    except TypeError as exc:
        raise ValueError(f"model {name!r} does not take the architecture parameters {sorted(arch)}: {exc}") from exc


def arch_of(model: nn.Module) -> dict:
    """The architecture parameters a model was built with ({} for fixed architectures)."""
    return dict(getattr(model, "arch", {}) or {})


def label(name: str, arch: dict | None = None) -> str:
    if name == "fastnet":
        return fastnet_label(arch or {})
    return LABELS.get(name, name)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    """Size of the saved state_dict in MB (10^6 bytes), in the model's current dtype."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


# ---------------------------------------------------------------- the CIFAR-100 report's custom ResNet

class ResidualBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the input (through a 1x1 conv + BN when the width or
    the resolution changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCustom(nn.Module):
    """3x3 stem + BN + ReLU, three residual stages (`blocks[i]` blocks of `widths[i]` channels; stages 2
    and 3 halve the map: 32 -> 16 -> 8), global average pooling, linear head (CIFAR-100 report, 2.2)."""

    def __init__(self, num_classes: int = 10, blocks=(3, 3, 3), widths=(64, 128, 256)):
        super().__init__()
        blocks, widths = tuple(int(b) for b in blocks), tuple(int(w) for w in widths)
        if len(blocks) != 3 or len(widths) != 3 or min(blocks) < 1 or min(widths) < 1:
            raise ValueError(f"the custom ResNet needs three positive block counts and three positive widths, "
                             f"got blocks={list(blocks)} widths={list(widths)}")
        self.arch = {"blocks": list(blocks), "widths": list(widths)}
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, c_in = [], widths[0]
        for i, (n, c_out) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*(ResidualBlock(c_in if j == 0 else c_out, c_out, stride if j == 0 else 1)
                                          for j in range(n))))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def resnet_custom(num_classes: int = 10, blocks=(3, 3, 3), widths=(64, 128, 256)) -> ResNetCustom:
    return ResNetCustom(num_classes, blocks, widths)

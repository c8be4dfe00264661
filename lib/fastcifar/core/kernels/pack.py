"""Weights of a folded FastNet packed once into the layout the kernel and its reference read.

Every convolution is an implicit GEMM: output rows are positions (batch, row, column), output columns
are channels, and the reduction index k runs over (kernel row, kernel column, input channel) in that
order, k = (kh * ksize + kw) * c_in + c. A layer's weights are one FP16 matrix (k, c_out); its bias
is FP32 (c_out,). The head is FP16 (features, classes), the head scale already in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ConvLayer:
    """One convolution with its fused epilogue: (+ bias, 2x2 max-pool), GELU, (+ skip), FP16 store."""

    c_in: int
    c_out: int
    h_in: int  # input map is h_in x h_in
    ksize: int
    pad: int
    pool: bool
    skip: int | None  # index of the layer whose output is added after GELU (the group's residual)
    weight: torch.Tensor  # (k, c_out) fp16
    bias: torch.Tensor  # (c_out,) fp32

    @property
    def conv_size(self) -> int:
        return self.h_in + 2 * self.pad - self.ksize + 1

    @property
    def h_out(self) -> int:
        return self.conv_size // 2 if self.pool else self.conv_size

    @property
    def k(self) -> int:
        return self.ksize * self.ksize * self.c_in


@dataclass
class PackedNet:
    """A folded FastNet in kernel layout, for a batch of 1 (or 2 with the mirror)."""

    layers: list[ConvLayer]
    head: torch.Tensor  # (features, classes) fp16
    num_classes: int
    convs: int
    mirror: bool

    @property
    def batch(self) -> int:
        return 2 if self.mirror else 1

    @property
    def features(self) -> int:
        return self.layers[-1].c_out

    def weight_bytes(self) -> int:
        return sum(l.weight.numel() * 2 + l.bias.numel() * 4 for l in self.layers) + self.head.numel() * 2


def _conv_layer(conv: nn.Conv2d, h_in: int, pad: int, pool: bool, skip, device) -> ConvLayer:
    c_out, c_in, ksize, _ = conv.weight.shape
    k = ksize * ksize * c_in
    # (out, in, kh, kw) -> (kh, kw, in, out) -> rows k = (kh * ksize + kw) * c_in + c
    w = conv.weight.detach().permute(2, 3, 1, 0).reshape(k, c_out).to(device=device, dtype=torch.float16)
    b = torch.zeros(c_out, dtype=torch.float32, device=device)
    if conv.bias is not None:
        b.copy_(conv.bias.detach().float())
    return ConvLayer(c_in, c_out, h_in, ksize, pad, pool, skip, w.contiguous(), b)


def folded(model: nn.Module) -> nn.Module:
    """The model with its BatchNorms folded (FastNet.fold_batchnorm), unless that was already done."""
    if getattr(model, "folded_batchnorms", None) is not None:
        return model.eval()
    if not hasattr(model, "fold_batchnorm") or not hasattr(model, "groups"):
        raise TypeError(f"the kernel runs a FastNet, not a {type(model).__name__}")
    return model.fold_batchnorm()


@torch.no_grad()
def pack(model: nn.Module, mirror: bool = False, device=None) -> PackedNet:
    """Pack a FastNet (folded here if needed) for the kernel and its reference."""
    model = folded(model)
    device = torch.device(device) if device is not None else model.whiten.weight.device
    whiten = model.whiten
    if whiten.kernel_size != (2, 2) or whiten.padding != (0, 0) or whiten.in_channels != 3:
        raise ValueError("the kernel expects FastNet's 2x2, unpadded, 3-channel whitening conv")
    layers = [_conv_layer(whiten, 32, 0, False, None, device)]
    convs = len(model.groups[0].convs)
    for group in model.groups:
        if len(group.convs) != convs:
            raise ValueError("every FastNet group must have the same number of convolutions")
        h = layers[-1].h_out
        first = len(layers)
        for i, conv in enumerate(group.convs):
            if not isinstance(group.norms[i], nn.Identity):
                raise ValueError("pack a folded FastNet (fold_batchnorm) or let pack fold it")
            skip = first if (convs == 3 and i == 2) else None
            layers.append(_conv_layer(conv, h if i == 0 else layers[-1].h_out, 1, i == 0, skip, device))
    head = model.head.weight.detach().t().to(device=device, dtype=torch.float16).contiguous()  # head scale folded in
    return PackedNet(layers, head, head.shape[1], convs, mirror)

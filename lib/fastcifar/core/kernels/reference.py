"""What the megakernel computes, in plain PyTorch (runs on the CPU): its specification.

It reads the packed weights in their kernel layout and rounds where the kernel rounds: the input and
every stored activation are FP16, products are accumulated in FP32, the epilogue runs in FP32 in the
kernel's order (max over the 2x2 pool window, + bias, GELU, + skip) and is stored as FP16. The head
takes the max over positions of the last FP16 activation and multiplies by the FP16 head in FP32;
with the mirror, batch row 1 is the input flipped left-right and the two rows' logits are averaged.
Only the order of FP32 additions differs from the kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .pack import ConvLayer, PackedNet


def _im2col(x: torch.Tensor, layer: ConvLayer) -> torch.Tensor:
    """(B, H, W, C) -> (B, S, S, k) with k = (kh * ksize + kw) * c_in + c, S the conv output size."""
    p, s, ks = layer.pad, layer.conv_size, layer.ksize
    xp = F.pad(x, (0, 0, p, p, p, p))
    taps = [xp[:, kh:kh + s, kw:kw + s, :] for kh in range(ks) for kw in range(ks)]
    return torch.cat(taps, dim=3)


def conv_layer(x: torch.Tensor, layer: ConvLayer, skip: torch.Tensor | None = None) -> torch.Tensor:
    """One layer on an FP16 channels-last input; returns its FP16 channels-last output."""
    cols = _im2col(x.float(), layer)
    acc = cols @ layer.weight[: layer.k, : layer.c_out].float()  # (B, S, S, c_out), fp32
    if layer.pool:
        n = layer.h_out * 2
        b = acc.shape[0]
        acc = acc[:, :n, :n].reshape(b, layer.h_out, 2, layer.h_out, 2, -1).amax(dim=(2, 4))
    y = acc + layer.bias[: layer.c_out].float()
    y = F.gelu(y)  # exact (erf) GELU
    if skip is not None:
        y = y + skip.float()
    return y.to(torch.float16)


def network_input(packed: PackedNet, x: torch.Tensor) -> torch.Tensor:
    """The (1, 3, 32, 32) input as the first layer reads it: FP16, channels last, mirrored as row 1."""
    if x.shape != (1, 3, 32, 32):
        raise ValueError(f"the FastNet kernel takes one (1, 3, 32, 32) image, got {tuple(x.shape)}")
    x = x.to(torch.float16)
    if packed.mirror:
        x = torch.cat([x, x.flip(3)])
    return x.permute(0, 2, 3, 1)


@torch.no_grad()
def reference(packed: PackedNet, x: torch.Tensor) -> torch.Tensor:
    """(1, num_classes) FP32 logits of the packed network for one normalised image."""
    dev = packed.head.device
    h = network_input(packed, x.to(dev))
    outputs = []
    for layer in packed.layers:
        skip = outputs[layer.skip] if layer.skip is not None else None
        h = conv_layer(h, layer, skip)
        outputs.append(h)
    features = h.float().amax(dim=(1, 2))  # (B, c_out)
    logits = features @ packed.head[: packed.features, : packed.num_classes].float()
    return logits.mean(dim=0, keepdim=True)

"""Weights of a folded FastNet packed once into the layout the fused kernels read.

Every convolution is an implicit GEMM: output rows are positions (batch, row, column), output columns
are channels, and the reduction index k runs over (kernel row, kernel column, input channel) in that
order, k = (kh * ksize + kw) * c_in + c. A layer's weights are one FP16 matrix (k_pad, n_pad), zero
padded to whole tiles so that the kernels load them without masks; its bias is FP32 (n_pad,).
Activations are FP16, channels last (batch, row, column, channel), one buffer per layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


def _pow2_at_least(n: int, floor: int = 16) -> int:
    p = floor
    while p < n:
        p *= 2
    return p


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


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
    block_m: int
    block_n: int
    block_k: int
    weight: torch.Tensor  # (k_pad, n_pad) fp16
    bias: torch.Tensor  # (n_pad,) fp32
    input_nchw: bool = False  # the network input (NCHW), read mirrored for batch row 1

    @property
    def conv_size(self) -> int:
        return self.h_in + 2 * self.pad - self.ksize + 1

    @property
    def h_out(self) -> int:
        return self.conv_size // 2 if self.pool else self.conv_size

    @property
    def k(self) -> int:
        return self.ksize * self.ksize * self.c_in

    @property
    def k_pad(self) -> int:
        return self.weight.shape[0]

    @property
    def n_pad(self) -> int:
        return self.weight.shape[1]

    def tiles(self, batch: int) -> int:
        rows = batch * self.h_out * self.h_out
        return -(-rows // self.block_m) * (self.n_pad // self.block_n)


@dataclass
class PackedNet:
    """A folded FastNet in kernel layout, for a batch of 1 (or 2 with the mirror)."""

    layers: list[ConvLayer]
    head: torch.Tensor  # (head_block_c, head_block_n) fp16: rows are features, columns classes
    num_classes: int
    convs: int
    mirror: bool
    activations: list[torch.Tensor] = field(default_factory=list)  # one fp16 NHWC buffer per layer
    logits: torch.Tensor | None = None  # (1, num_classes) fp32 output buffer

    @property
    def batch(self) -> int:
        return 2 if self.mirror else 1

    @property
    def features(self) -> int:
        return self.layers[-1].c_out

    @property
    def head_positions(self) -> int:
        return self.layers[-1].h_out ** 2

    def weight_bytes(self) -> int:
        return sum(l.weight.numel() * 2 + l.bias.numel() * 4 for l in self.layers) + self.head.numel() * 2


def tile_sizes(rows: int, c_in: int, c_out: int, target_tiles: int = 64,
               max_block_k: int = 64) -> tuple[int, int, int]:
    """(block_m, block_n, block_k) for a layer. At batch 1 a layer has few output rows, so tiles are
    kept small enough that it spreads over about `target_tiles` programs: block_n shrinks (down to
    16, the least tl.dot takes) until the layer has that many tiles.

    A tile's K loop is a chain of dependent steps (load, multiply-add), so deep layers spend their
    time in step latency, not arithmetic: `max_block_k` (a power of two >= 64) lets layers with at
    least that many input channels take fewer, larger steps."""
    if max_block_k < 64 or max_block_k & (max_block_k - 1):
        raise ValueError(f"max_block_k must be a power of two >= 64, not {max_block_k}")
    block_m = 64 if rows >= 2048 else 32 if rows >= 128 else 16
    m_blocks = -(-rows // block_m)
    block_n = min(64, _pow2_at_least(c_out))
    while block_n > 16 and m_blocks * -(-c_out // block_n) < target_tiles:
        block_n //= 2
    block_k = 16 if c_in < 8 else 32 if c_in < 64 else 64
    while block_k < max_block_k and c_in >= 2 * block_k:
        block_k *= 2
    return block_m, block_n, block_k


def _conv_layer(conv: nn.Conv2d, h_in: int, pad: int, pool: bool, skip, batch: int, input_nchw=False,
                target_tiles: int = 64, max_block_k: int = 64) -> ConvLayer:
    c_out, c_in, ksize, _ = conv.weight.shape
    probe = ConvLayer(c_in, c_out, h_in, ksize, pad, pool, skip, 0, 0, 0, torch.empty(0, 0), torch.empty(0))
    rows = batch * probe.h_out ** 2
    block_m, block_n, block_k = tile_sizes(rows, c_in, c_out, target_tiles, max_block_k)
    k = ksize * ksize * c_in
    w = torch.zeros(_round_up(k, block_k), _round_up(c_out, block_n), dtype=torch.float16,
                    device=conv.weight.device)
    # (out, in, kh, kw) -> (kh, kw, in, out) -> rows k = (kh * ksize + kw) * c_in + c
    w[:k, :c_out] = conv.weight.detach().permute(2, 3, 1, 0).reshape(k, c_out).to(torch.float16)
    b = torch.zeros(w.shape[1], dtype=torch.float32, device=conv.weight.device)
    if conv.bias is not None:
        b[:c_out] = conv.bias.detach().float()
    return ConvLayer(c_in, c_out, h_in, ksize, pad, pool, skip, block_m, block_n, block_k, w, b, input_nchw)


def folded(model: nn.Module) -> nn.Module:
    """The model with its BatchNorms folded (FastNet.fold_batchnorm), unless that was already done."""
    if getattr(model, "folded_batchnorms", None) is not None:
        return model.eval()
    if not hasattr(model, "fold_batchnorm") or not hasattr(model, "groups"):
        raise TypeError(f"the fused kernels run a FastNet, not a {type(model).__name__}")
    return model.fold_batchnorm()


@torch.no_grad()
def pack(model: nn.Module, mirror: bool = False, device=None, target_tiles: int = 64,
         max_block_k: int = 64) -> PackedNet:
    """Pack a FastNet (folded here if needed) for the fused kernels, with its activation buffers.
    `target_tiles` and `max_block_k` set how each layer is tiled (see tile_sizes)."""
    tile_sizes(1, 1, 1, target_tiles, max_block_k)  # refuses a bad max_block_k before any work
    model = folded(model)
    device = torch.device(device) if device is not None else model.whiten.weight.device
    batch = 2 if mirror else 1
    whiten = model.whiten
    if whiten.kernel_size != (2, 2) or whiten.padding != (0, 0) or whiten.in_channels != 3:
        raise ValueError("the fused kernels expect FastNet's 2x2, unpadded, 3-channel whitening conv")
    layers = [_conv_layer(whiten, 32, 0, False, None, batch, input_nchw=True, target_tiles=target_tiles,
                          max_block_k=max_block_k)]
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
            layers.append(_conv_layer(conv, h if i == 0 else layers[-1].h_out, 1, i == 0, skip, batch,
                                      target_tiles=target_tiles, max_block_k=max_block_k))
    layers = [ConvLayer(**{**l.__dict__, "weight": l.weight.to(device), "bias": l.bias.to(device)})
              for l in layers]
    head_w = model.head.weight.detach()  # already multiplied by head_scale in the folded model
    num_classes, features = head_w.shape
    head = torch.zeros(_pow2_at_least(features), _pow2_at_least(num_classes), dtype=torch.float16, device=device)
    head[:features, :num_classes] = head_w.t().to(device=device, dtype=torch.float16)
    net = PackedNet(layers, head, num_classes, convs, mirror)
    net.activations = [torch.zeros(batch, l.h_out, l.h_out, l.c_out, dtype=torch.float16, device=device)
                       for l in layers]
    net.logits = torch.zeros(1, num_classes, dtype=torch.float32, device=device)
    return net

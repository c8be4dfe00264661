"""Backend "fused-layers": one Triton kernel per convolution (epilogue fused) and one for the head."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_tiles import conv_tile, head_tile
from .pack import ConvLayer, PackedNet

_FP16 = torch.float16


def check_input(x) -> None:
    """The kernels read x as one FP16 (1, 3, 32, 32) contiguous image: anything else is refused."""
    if x.dtype is not _FP16 or tuple(x.shape) != (1, 3, 32, 32) or not x.is_contiguous():
        raise ValueError(f"the fused FastNet takes a contiguous float16 (1, 3, 32, 32) tensor, got "
                         f"{x.dtype} {tuple(x.shape)}{'' if x.is_contiguous() else ' (not contiguous)'}: "
                         "convert with x.half().contiguous()")


@triton.jit(do_not_specialize=["batch"])  # mirror on and off share compiled code
def layer_kernel(in_ptr, w_ptr, b_ptr, skip_ptr, out_ptr, batch,
                 C_IN: tl.constexpr, H_IN: tl.constexpr, C_OUT: tl.constexpr, H_OUT: tl.constexpr,
                 KSIZE: tl.constexpr, PAD: tl.constexpr, POOL: tl.constexpr, RESIDUAL: tl.constexpr,
                 INPUT_NCHW: tl.constexpr, K_PAD: tl.constexpr, N_PAD: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    conv_tile(tl.program_id(0), in_ptr, w_ptr, b_ptr, skip_ptr, out_ptr, batch, C_IN, H_IN, C_OUT, H_OUT,
              KSIZE, PAD, POOL, RESIDUAL, INPUT_NCHW, K_PAD, N_PAD, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit(do_not_specialize=["batch"])  # mirror on and off share compiled code
def head_kernel(act_ptr, head_ptr, out_ptr, batch, C: tl.constexpr, POSITIONS: tl.constexpr,
                CLASSES: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_J: tl.constexpr):
    head_tile(act_ptr, head_ptr, out_ptr, batch, C, POSITIONS, CLASSES, BLOCK_C, BLOCK_P, BLOCK_J)


def layer_constants(layer: ConvLayer) -> dict:
    """The compile-time constants of one layer, as the kernels name them."""
    return dict(C_IN=layer.c_in, H_IN=layer.h_in, C_OUT=layer.c_out, H_OUT=layer.h_out, KSIZE=layer.ksize,
                PAD=layer.pad, POOL=int(layer.pool), RESIDUAL=int(layer.skip is not None),
                INPUT_NCHW=int(layer.input_nchw), K_PAD=layer.k_pad, N_PAD=layer.n_pad,
                BLOCK_M=layer.block_m, BLOCK_N=layer.block_n, BLOCK_K=layer.block_k)


def head_constants(packed: PackedNet) -> dict:
    return dict(C=packed.features, POSITIONS=packed.head_positions, CLASSES=packed.num_classes,
                BLOCK_C=packed.head.shape[0], BLOCK_P=max(16, triton.next_power_of_2(packed.head_positions)),
                BLOCK_J=packed.head.shape[1])


def make_layers_fn(packed: PackedNet, num_warps: int = 4, num_stages: int | None = None):
    """fn(x) -> logits: len(layers) + 1 launches, each layer reading the previous one's buffer.

    fn returns the packed net's logits buffer itself (no allocation): the next call overwrites it."""
    batch = packed.batch
    options = {"num_warps": num_warps} if num_stages is None else {"num_warps": num_warps, "num_stages": num_stages}
    launches = []
    for i, layer in enumerate(packed.layers):
        out = packed.activations[i]
        skip = packed.activations[layer.skip] if layer.skip is not None else out
        launches.append(((layer.tiles(batch),), (layer.weight, layer.bias, skip, out, batch), layer_constants(layer)))
    head_args = (packed.activations[-1], packed.head, packed.logits, batch)
    head_const = head_constants(packed)

    compiled = [None] * (len(launches) + 1)  # the launched kernels, for their resources (see resources)

    def fn(x):
        check_input(x)
        src = x
        for i, (grid, args, const) in enumerate(launches):
            compiled[i] = layer_kernel[grid](src, *args, **options, **const)
            src = args[3]
        compiled[-1] = head_kernel[(1,)](*head_args, **options, **head_const)
        return packed.logits

    fn.kernels_per_call = len(launches) + 1
    fn.compiled = compiled
    return fn

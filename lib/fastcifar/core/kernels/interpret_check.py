"""Run the Triton kernels on the CPU under TRITON_INTERPRET=1 and compare them with the reference.

Triton reads TRITON_INTERPRET when it is first imported, so this module sets it and must run in a
fresh process: `python -m fastcifar.core.kernels.interpret_check [--widths 16 16 32] [--convs 2] [--mirror]`.
Prints one JSON line per backend ({"backend", "max_abs", "max_ref", "rel"}) and exits 1 on a mismatch.
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs=3, default=[16, 16, 32])
    parser.add_argument("--convs", type=int, default=2, choices=(2, 3))
    parser.add_argument("--mirror", action="store_true")
    parser.add_argument("--target-tiles", type=int, default=64, help="see pack.tile_sizes (1: largest tiles)")
    parser.add_argument("--max-block-k", type=int, default=64, help="see pack.tile_sizes")
    parser.add_argument("--seeds", type=int, default=2, help="random inputs per backend")
    parser.add_argument("--backends", nargs="+", default=["fused-layers", "fused-persistent"])
    args = parser.parse_args(argv)

    from fastcifar.core.kernels import KERNEL_TOLERANCE, make_fn, pack, reference
    from fastcifar.core.kernels.samples import random_fastnet

    model = random_fastnet(tuple(args.widths), args.convs)
    ok = True
    for backend in args.backends:
        packed = pack(model, mirror=args.mirror, target_tiles=args.target_tiles,
                      max_block_k=args.max_block_k)
        fn = make_fn(packed, backend, programs=1)  # the interpreter runs programs one after another
        for seed in range(1, args.seeds + 1):
            torch.manual_seed(seed)
            x = torch.randn(1, 3, 32, 32).to(torch.float16)
            got = fn(x).clone()
            want = reference(packed, x)
            max_abs = (got - want).abs().max().item()
            max_ref = want.abs().max().item()
            rel = max_abs / max(max_ref, 1e-30)
            ok &= bool(rel <= KERNEL_TOLERANCE) and got.shape == want.shape
            print(json.dumps({"backend": backend, "seed": seed, "max_abs": max_abs, "max_ref": max_ref,
                              "rel": rel, "shape": list(got.shape)}), flush=True)
        try:  # a float32 input must be refused, not read as if it were float16
            fn(x.float())
            refused = False
        except ValueError:
            refused = True
        ok &= refused
        print(json.dumps({"backend": backend, "refuses_float32": refused}), flush=True)
    from fastcifar.core.kernels.persistent import make_barrier_fn

    sync = make_barrier_fn(1, 3, "cpu")()  # one program: the barrier must let it through at once
    ok &= int(sync.item()) == 0
    print(json.dumps({"barrier_rounds": 3, "counter": int(sync.item())}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

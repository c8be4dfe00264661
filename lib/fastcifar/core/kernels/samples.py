"""Random FastNets for checks and benchmarks of the kernel."""
from __future__ import annotations

import torch


def random_fastnet(widths, convs, seed=0):
    """A FastNet with random weights and non-trivial BatchNorm statistics, in eval mode (on the CPU)."""
    from fastcifar.core.models import FastNet

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = FastNet(widths=tuple(widths), convs=convs)
        with torch.no_grad():
            for conv in (c for g in model.groups for c in g.convs):
                conv.weight.add_(0.05 * torch.randn_like(conv.weight))  # more than the identity-like start
            model.train()
            for _ in range(3):  # running statistics away from (0, 1)
                model(torch.randn(16, 3, 32, 32))
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval()

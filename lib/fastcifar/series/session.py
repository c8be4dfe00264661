"""What a notebook of the series starts with: its run (profile, folders, device; core.env.start), the
CIFAR splits as the profile wants them, their validation and test sets on the device, and the columns
every results row of the notebook carries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import data, env


@dataclass
class Session:
    run: env.Run
    splits: data.Splits
    val: tuple[torch.Tensor, torch.Tensor]   # normalised images and labels, on the device
    test: tuple[torch.Tensor, torch.Tensor]
    meta: dict                               # columns of every results row: run_meta and the data's provenance

    @property
    def device(self) -> torch.device:
        return self.run.device

    @property
    def warmup(self) -> int:
        return self.run.profile.warmup_iters

    @property
    def iters(self) -> int:
        return self.run.profile.measure_iters

    def figure(self, name: str):
        return self.run.fig_dir / name

    def output(self, name: str):
        return self.run.out_dir / name


def start(notebook: str, profile: str = "auto", seed: int = 42, dataset: str = "cifar10") -> Session:
    """Start `notebook`'s run (a loud banner in the smoke profile) and load its data onto the device."""
    run = env.start(notebook, profile, seed)
    splits = data.splits_for(run, seed, dataset=dataset)
    return Session(run, splits, splits.tensors("val", run.device), splits.tensors("test", run.device),
                   {**run.row_meta(), "data_source": splits.source})

"""J3, the accuracy baseline: ResNet-18 for CIFAR from scratch (row B2), the teacher J4 distils from and
whose validation accuracy is F2's bar. One function per step of notebooks/J3_resnet_teacher.ipynb.

Writes the teacher's checkpoints (resnet18_best.pth, resnet18_last.pth) with its log and hyperparameter
sheet, the B2 row of results.csv, and j3_curves.png.
"""
from __future__ import annotations

import math

import torch

from . import report
from .session import Session
from ..core import bench, distill, engine, models, optimize


def build_teacher(num_classes: int, seed: int) -> torch.nn.Module:
    """ResNet-18 adapted to CIFAR (3x3 stride-1 first conv, no max-pool), seeded; says what it is."""
    torch.manual_seed(seed)
    teacher = models.resnet18_cifar(num_classes)
    with torch.inference_mode():
        print("forward (1, 3, 32, 32) ->", tuple(teacher.eval()(torch.randn(1, 3, 32, 32)).shape))
    print(f"parameters: {models.count_params(teacher):,}")
    print("first conv:", teacher.conv1, "| max-pool:", teacher.maxpool)
    return teacher


def initial_loss(s: Session, teacher: torch.nn.Module) -> str:
    """The untrained teacher (moved to the device) on 512 validation images, against ln(classes)."""
    teacher.to(s.device)
    k = len(s.splits.classes)
    first = engine.initial_loss(teacher, s.val[0][:512], s.val[1][:512])
    return f"initial loss {first:.4f} (ln {k} = {math.log(k):.4f})"


def train_teacher(s: Session, teacher: torch.nn.Module, seed: int, *, epochs: int, batch_size: int, lr: float,
                  label_smoothing: float, cutout: int) -> engine.TrainResult:
    """core.engine.fit with the notebook's recipe (cutout, label smoothing; channels_last on the GPU); the
    best checkpoint by validation accuracy is the teacher."""
    cfg = engine.TrainConfig(epochs=s.run.profile.epochs(epochs), batch_size=batch_size, lr=lr,
                             label_smoothing=label_smoothing, cutout=cutout, seed=seed,
                             channels_last=s.device.type == "cuda")
    result = engine.fit(teacher, s.splits, cfg, "resnet18", "resnet18", s.run.ckpt_dir, s.device, resume=False)
    print(f"best val acc {result.best_val_acc:.2f}% | {result.train_s:.1f} s | {result.images_per_s:,.0f} images/s")
    return result


def gap_line(result: engine.TrainResult) -> str:
    return (f"train-val gap at the end: {result.history.gap.iloc[-1]:.2f} points (train accuracy is on augmented "
            "images)")


def measure_b2(s: Session, result: engine.TrainResult):
    """Row B2: the best checkpoint timed in FP32 (J1 benchmark) and evaluated on validation and test;
    added to results.csv. Returns the row."""
    best, ckpt = engine.load_model(result.best_path, s.device)
    b2, _ = optimize.measure_specs(best, "resnet18", {"B2": optimize.Spec()}, s.val, s.test, s.warmup, s.iters, s.meta)
    b2 = b2.assign(train_s=result.train_s, images_per_s=result.images_per_s,
                   notes=f"best epoch {ckpt['epoch']}; checkpoint file {result.best_path.stat().st_size / 1e6:.1f} MB")
    bench.write_results(s.run.results_csv, b2.to_dict("records"))
    return b2


def bars_line(b2) -> str:
    """The teacher against the seed's bar (on test, reported only), and the bar it sets for F2 (validation)."""
    acc, val_acc = b2.accuracy.iloc[0], b2.val_accuracy.iloc[0]
    return (f"test accuracy {acc:.2f}%: seed bar {report.SEED_BAR:g}% {'met' if acc >= report.SEED_BAR else 'MISSED'}; "
            f"validation accuracy {val_acc:.2f}%, the bar F2 has to reach in J4/J5")


def soft_labels_table(s: Session, result: engine.TrainResult, T: float | None):
    """The best checkpoint loaded back (same test accuracy), and its soft labels at temperature T (None:
    distill.DEFAULT_T) for six test images: the three most likely classes of each."""
    import pandas as pd

    T = distill.DEFAULT_T if T is None else T
    reloaded, _ = engine.load_model(result.best_path, s.device)
    _, acc_again = engine.evaluate(reloaded, *s.test)
    print(f"reloaded checkpoint: test accuracy {acc_again:.2f}% (same weights, same number); soft labels at T = {T:g}")
    probs = distill.soft_labels(reloaded, s.test[0][:6], T).cpu()
    top = probs.topk(3, dim=1)
    classes = s.splits.classes
    return pd.DataFrame([{"true": classes[int(s.test[1][i])],
                          **{f"top{k + 1}": f"{classes[int(top.indices[i, k])]} {top.values[i, k]:.2f}" for k in range(3)}}
                         for i in range(len(probs))])

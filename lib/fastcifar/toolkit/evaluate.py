"""Final evaluation of a checkpoint (CIFAR-100 report, section 9).

    python -m fastcifar.evaluate --config FILE --checkpoint PATH [overrides]

Rebuilds the model the checkpoint was made from (its architecture is stored in it), then measures on
`eval_split` (test by default): mean cross-entropy, top-1 and top-5 accuracy, per-class accuracy and
the confusion matrix; on CIFAR-100 also the superclass (coarse label) accuracy. Writes metrics.json,
per_class.csv, confusion_matrix.csv and confusion_matrix.png.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import commands, config as configs
from ..core import atomic, engine, models, plots
from ..core.data import to_tensor


@torch.inference_mode()
def predict(model: torch.nn.Module, images: np.ndarray, mean, std, device, batch_size: int = 1000,
            progress: bool = False) -> torch.Tensor:
    """Logits (float32, on the CPU) of `model` for uint8 HWC images, in batches."""
    model.eval()
    out = []
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="evaluate", disable=None if progress else True, file=sys.stdout, mininterval=2.0):
        x = to_tensor(images[i:i + batch_size], device, mean, std)
        out.append(model(x).float().cpu())
    return torch.cat(out)


def metrics(logits: torch.Tensor, labels: np.ndarray, num_classes: int) -> dict:
    """Loss, top-1 and top-5 accuracy (%; top-k with k = min(5, classes)), per-class accuracy (%) and
    the confusion matrix (rows: true class, columns: predicted)."""
    y = torch.as_tensor(labels, dtype=torch.long)
    loss = F.cross_entropy(logits, y).item()
    k = min(5, num_classes)
    topk = logits.topk(k, dim=1).indices
    pred = topk[:, 0]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    per_class_total = confusion.sum(1)
    per_class = torch.where(per_class_total > 0, 100.0 * confusion.diag() / per_class_total.clamp(min=1),
                            torch.full((num_classes,), float("nan")))
    return {"loss": loss, "top1": 100.0 * (pred == y).float().mean().item(),
            "top5": 100.0 * (topk == y[:, None]).any(1).float().mean().item(), "images": len(y),
            "per_class": per_class.tolist(), "per_class_images": per_class_total.tolist(),
            "confusion": confusion.numpy()}


def split_differences(ckpt: dict, config: dict, train_images: int) -> list[str]:
    """Why this validation split may not be the one the checkpoint was chosen on (then it may hold images
    the model was trained on): a different seed or training-set size. Empty when nothing says so."""
    trained_on = ckpt.get("config") or {}
    lines = []
    if "seed" in trained_on and trained_on["seed"] != config["seed"]:
        lines.append(f"the checkpoint's split used seed {trained_on['seed']}, this one seed {config['seed']}")
    if ckpt.get("train_images") not in (None, train_images):
        lines.append(f"the checkpoint was trained on {ckpt['train_images']} images, this split's training set "
                     f"has {train_images} (val_size or train_limit differ)")
    if lines:
        lines.append("this validation split may hold images the model was trained on; use the checkpoint's "
                     "seed and val_size, or eval_split=test")
    return lines


def evaluate_checkpoint(config: dict, run, device, checkpoint=None) -> None:
    import pandas as pd

    model, ckpt = engine.load_model(checkpoint, device)
    expected = configs.num_classes(config)
    if ckpt["num_classes"] != expected:
        raise configs.ConfigError(f"--checkpoint: {checkpoint} has {ckpt['num_classes']} classes but dataset "
                                  f"{config['dataset']} has {expected}; expected a checkpoint trained on it")
    trained_on = (ckpt.get("config") or {})
    run.update(checkpoint_info={"model_name": ckpt["model_name"], "arch": ckpt.get("arch", {}),
                                "epoch": ckpt.get("epoch"), "best_val_acc": ckpt.get("best_val_acc"),
                                "data_source": ckpt.get("data_source"), "train_config": trained_on})
    print(f"checkpoint: {models.label(ckpt['model_name'], ckpt.get('arch'))} {ckpt.get('arch', {})}, epoch "
          f"{ckpt.get('epoch')}, {models.count_params(model):,} parameters", flush=True)
    splits = commands.load_splits(config, run)
    if ckpt.get("data_source") and ckpt["data_source"] != splits.source:
        print(f"warning: the checkpoint was trained on {ckpt['data_source']}, evaluated on {splits.source}",
              flush=True)
    if config["eval_split"] == "val":
        for line in split_differences(ckpt, config, len(splits.train)):
            print(f"warning: {line}", flush=True)
    split = getattr(splits, config["eval_split"])
    logits = predict(model, split.images, splits.mean, splits.std, device, config["eval_batch_size"],
                     config["progress"])
    result = metrics(logits, split.labels, expected)
    confusion = result.pop("confusion")
    classes = splits.classes
    per_class = pd.DataFrame({"class": range(expected), "name": classes, "images": result["per_class_images"],
                              "accuracy": result["per_class"]})
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    per_class["most_confused_with"] = [classes[int(j)] if off_diagonal[i].max() > 0 else ""
                                       for i, j in enumerate(off_diagonal.argmax(1))]
    with atomic.atomic_path(run.file("per_class.csv")) as tmp:
        per_class.to_csv(tmp, index=False)
    with atomic.atomic_path(run.file("confusion_matrix.csv")) as tmp:
        pd.DataFrame(confusion, index=classes, columns=classes).to_csv(tmp)
    summary = {k: v for k, v in result.items() if k not in ("per_class", "per_class_images")}
    # relative to this run folder: a path of the machine that ran it would mean nothing on another
    summary.update(split=config["eval_split"], checkpoint=os.path.relpath(checkpoint, run.path))
    if split.coarse_labels is not None and splits.train.coarse_labels is not None:
        # fine -> coarse as the training labels pair them; a prediction counts when its superclass is right
        fine_to_coarse = np.zeros(expected, dtype=np.int64)
        fine_to_coarse[splits.train.labels] = splits.train.coarse_labels
        predicted = logits.argmax(1).numpy()
        summary["superclass_top1"] = 100.0 * float(np.mean(fine_to_coarse[predicted] == split.coarse_labels))
    commands.write_json(run.file("metrics.json"), summary)
    import matplotlib

    matplotlib.use("Agg")  # a command draws without a display
    import matplotlib.pyplot as plt

    plt.close(plots.confusion_figure(confusion, classes, run.file("confusion_matrix.png"),
                                     f"{config['dataset']} {config['eval_split']}: top-1 {summary['top1']:.2f}%"))
    run.update(result=summary)
    print(f"evaluate ({config['eval_split']}, {summary['images']} images): loss {summary['loss']:.4f}, top-1 "
          f"{summary['top1']:.2f}%, top-5 {summary['top5']:.2f}%"
          + (f", superclass {summary['superclass_top1']:.2f}%" if "superclass_top1" in summary else ""), flush=True)
    ranked = per_class.dropna(subset=["accuracy"]).sort_values("accuracy", kind="stable")
    show = lambda rows: ", ".join(f"{r['name']} {r['accuracy']:.1f}" for _, r in rows.iterrows())
    print(f"worst classes: {show(ranked.head(5))}", flush=True)
    print(f"best classes: {show(ranked.tail(5).iloc[::-1])}", flush=True)


def main(argv: list[str] | None = None) -> int:
    return commands.run_command("evaluate", "Loss, top-1/top-5, per-class accuracy and confusion matrix of a "
                                "checkpoint.", evaluate_checkpoint, argv, needs_checkpoint=True)


if __name__ == "__main__":
    sys.exit(main())

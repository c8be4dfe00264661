"""Training engine: `fit` for the light models, the teacher and the toolkit's models; checkpoints;
evaluation (`evaluate`, the one accuracy of a model); sanity checks.

There are two training loops, and this is the general one. FastNet trains on its recipe's own loop
(series/recipe.py says why: a summed loss with per-group step sizes, a schedule counted in steps,
lookahead averaging and a whitening layer, and no checkpoint choice), which imports from here what
is the same: `autocast`, `evaluate`, `save_checkpoint` / `load_model`, beside core.data's loader and
core.distill's loss.

Recipe (J3-03, one place): SGD momentum 0.9 (Nesterov), weight decay 5e-4, learning rate 0.1 at
batch 128 scaled linearly with the batch, a short linear warm-up then cosine decay to zero, optional
label smoothing and cutout. The config-driven commands (CIFAR-100 report) may choose Adam or AdamW
and a constant learning rate instead, and log to TensorBoard. On CUDA: bf16 autocast and
channels_last. Data comes from the GPU-resident loader. Checkpoints: `<name>_best.pth` (best
validation accuracy, never test) and `<name>_last.pth` (for resuming), both written atomically.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import atomic, env
from .data import GpuLoader, Splits, to_tensor
from .distill import DEFAULT_ALPHA, DEFAULT_T, distillation_loss
from .models import arch_of, build_model

CHECKPOINT_FORMAT = "fastcifar-checkpoint/1"
SCHEDULES = ("warmup_cosine", "cosine", "multistep", "constant")
OPTIMIZERS = ("sgd", "adam", "adamw")
# Settings added after checkpoints already existed, with the value those checkpoints were trained with.
_ADDED_SETTINGS = {"optimizer": "sgd"}


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 512
    lr: float = 0.1  # at base_batch; the step size used is lr * batch_size / base_batch
    base_batch: int = 128
    optimizer: str = "sgd"  # sgd | adam | adamw (momentum and nesterov apply to sgd only)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "warmup_cosine"  # warmup_cosine | cosine | multistep | constant
    warmup_epochs: float = 1.0
    milestones: tuple = (0.5, 0.75)  # multistep: fractions of training where lr is divided by 10
    label_smoothing: float = 0.0
    cutout: int = 0  # side of the square hole in pixels; 0 = off
    bf16: bool = True  # autocast on CUDA only
    channels_last: bool = True  # CUDA only (see uses_channels_last)
    seed: int = 42
    checkpoint_every: int = 5  # epochs between `_last` checkpoints (and always the final epoch)
    distill_T: float = DEFAULT_T  # used only when a teacher is given
    distill_alpha: float = DEFAULT_ALPHA

    @property
    def peak_lr(self) -> float:
        return self.lr * self.batch_size / self.base_batch

    def lr_factor(self, step: int, total: int, steps_per_epoch: int) -> float:
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "multistep":
            return 0.1 ** sum(step >= m * total for m in self.milestones)
        warm = int(self.warmup_epochs * steps_per_epoch) if self.schedule == "warmup_cosine" else 0
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")


@dataclass
class TrainResult:
    history: "object"  # pandas DataFrame, one row per epoch
    best_path: Path
    last_path: Path
    sheet_path: Path
    best_val_acc: float
    train_s: float  # wall time of the training epochs run in this call (evaluation included)
    images_per_s: float  # training throughput, mean over epochs


# ---------------------------------------------------------------- checkpoints

def uses_channels_last(cfg: "TrainConfig", device) -> bool:
    """channels_last is a GPU layout choice: on the CPU it buys nothing, and some torch builds abort in
    backward() on odd batch sizes with it (seen with torch 2.14), so training there keeps NCHW."""
    return cfg.channels_last and torch.device(device).type == "cuda"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and what to change."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged or for another model."""


class ResumeRefused(CheckpointError):
    """`fit` cannot go on from a `_last` checkpoint made with other settings or data; raised before any
    training step."""


def _load_failure(exc: Exception) -> str:
    """What torch.load's error says about a file, in a few words. Its advice to load with
    weights_only=False (which runs whatever code the file holds) is never passed on."""
    text = str(exc)
    if "Unsupported global" in text:  # a weights-only load met an object that is not plain data
        found = text.split("Unsupported global:", 1)[1].split()
        name = found[1] if len(found) > 1 and found[0] == "GLOBAL" else "an object"
        return (f"it holds a Python object ({name}) besides tensors and plain data, which no checkpoint of this "
                "project holds; it is not loaded, since loading it could run code")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    first = first.split(". ", 1)[0].rstrip(".")
    if "weights_only" in first:
        first = "torch could not read it"
    return f"{type(exc).__name__}: {first[:160]}"


def load_weights(model: torch.nn.Module, state_dict: dict, path, model_name: str) -> None:
    """Load `state_dict` into `model`; a checkpoint for another architecture is one CheckpointError line
    (how many tensors differ and the first one), not torch's line per tensor."""
    mine = model.state_dict()
    missing = [k for k in mine if k not in state_dict]
    extra = [k for k in state_dict if k not in mine]
    shapes = [k for k in mine if k in state_dict and tuple(state_dict[k].shape) != tuple(mine[k].shape)]
    differ = len(missing) + len(extra) + len(shapes)
    if differ:
        if shapes:
            first = (f"{shapes[0]}: {list(state_dict[shapes[0]].shape)} in the checkpoint, "
                     f"{list(mine[shapes[0]].shape)} in the model")
        else:
            first = f"{(missing or extra)[0]}: {'missing from the checkpoint' if missing else 'not in the model'}"
        raise CheckpointError(f"{path}: its weights do not fit a {model_name!r} {arch_of(model) or ''}".rstrip()
                              + f": {differ} of {len(set(mine) | set(state_dict))} tensors differ (first: {first}); "
                              "expected a checkpoint of this architecture (its `arch` entry and its weights disagree, "
                              "or the config names another model)")
    model.load_state_dict(state_dict)


def save_checkpoint(path: str | Path, model: torch.nn.Module, model_name: str, num_classes: int, **extra) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "model_name": model_name, "num_classes": num_classes,
               "arch": arch_of(model), "state_dict": state, **extra}
    with atomic.atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, model_name: str | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train the model first (its notebook writes it)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise CheckpointError(f"{path} is damaged or not a checkpoint ({_load_failure(exc)}); expected a checkpoint "
                              "this project wrote, such as a run folder's model_best.pth") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if model_name is not None and ckpt["model_name"] != model_name:
        raise CheckpointError(f"{path} holds a {ckpt['model_name']!r}, expected {model_name!r}")
    return ckpt


def load_model(path: str | Path, device="cpu", model_name: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model a checkpoint was made from and load its weights (eval mode)."""
    ckpt = load_checkpoint(path, model_name)
    try:
        model = build_model(ckpt["model_name"], ckpt["num_classes"], **ckpt.get("arch", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild its model ({type(exc).__name__}: {exc}); expected a checkpoint "
                              "this project wrote") from None
    load_weights(model, ckpt["state_dict"], path, ckpt["model_name"])
    return model.to(device).eval(), ckpt


# ---------------------------------------------------------------- evaluation

@torch.inference_mode()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
             autocast_dtype: torch.dtype | None = None, bf16: bool = False,
             mirror: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in %) of `model` on normalised images already on its device: the one
    accuracy of a model the library computes (fit's validation, the FastNet recipe, the notebooks, the
    final-model check). `autocast_dtype`: autocast to that dtype on any device; `bf16`: bf16 autocast on
    CUDA only (`autocast`); `mirror`: flip test-time augmentation, the logits of each image and of its
    mirror averaged (optimize.with_mirror, as the variants compute it)."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    if mirror:
        from .optimize import with_mirror

        model = with_mirror(model)
    ctx = (torch.autocast(images.device.type, dtype=autocast_dtype) if autocast_dtype
           else autocast(images.device, bf16))
    loss = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for i in range(0, len(labels), batch_size):
        with ctx:
            out = model(images[i:i + batch_size]).float()
        loss += F.cross_entropy(out, labels[i:i + batch_size], reduction="sum")
        correct += (out.argmax(1) == labels[i:i + batch_size]).sum()
    n = len(labels)
    return loss.item() / n, 100.0 * correct.item() / n


# ---------------------------------------------------------------- training

def make_optimizer(params, cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer `cfg` names, at `lr` (default: cfg.peak_lr). Adam's weight decay is the classic L2
    term added to the gradient; AdamW's is decoupled from it."""
    lr = cfg.peak_lr if lr is None else lr
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


_TENSORBOARD_MISSING_SAID = False


def tensorboard_writer(log_dir: str | Path | None):
    """A torch.utils.tensorboard SummaryWriter on `log_dir`, or None (no dir, or the package is missing:
    said once per process; the CSV log is written either way)."""
    global _TENSORBOARD_MISSING_SAID
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(log_dir))
    except Exception as exc:  # missing, or installed but unusable (version clashes): training goes on
        if not _TENSORBOARD_MISSING_SAID:
            why = "is not installed" if isinstance(exc, ImportError) else f"does not work here ({exc})"
            print(f"tensorboard {why}: no TensorBoard logs (the CSV log is kept); "
                  "`pip install tensorboard` to get them", flush=True)
            _TENSORBOARD_MISSING_SAID = True
        return None


def autocast(device, enabled: bool = True):
    """bf16 autocast on CUDA (how the series trains and evaluates there); nothing elsewhere or when not `enabled`."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled and torch.device(device).type == "cuda" \
        else nullcontext()


def _autocast(device: torch.device, cfg: TrainConfig):
    return autocast(device, cfg.bf16)


def _comparable(config: dict) -> dict:
    return {k: v for k, v in {**_ADDED_SETTINGS, **config}.items() if k not in ("epochs", "checkpoint_every")}


_NOT_RECORDED = "(not recorded)"


def resume_mismatch(ckpt: dict, config: dict, data_source: str, train_images: int) -> dict[str, tuple]:
    """{key: (checkpoint's value, this run's value)} for everything a resumed run must share with the
    checkpoint: the settings (epochs may grow, not shrink), the data fingerprint and the training-set size."""
    old_cfg = ckpt.get("config", {})
    old = {**_comparable(old_cfg), "data_source": ckpt.get("data_source", _NOT_RECORDED),
           "train_images": ckpt.get("train_images", _NOT_RECORDED)}
    new = {**_comparable(config), "data_source": data_source, "train_images": train_images}
    differ = {k: (old.get(k, _NOT_RECORDED), new.get(k, _NOT_RECORDED)) for k in dict.fromkeys([*old, *new])
              if old.get(k, _NOT_RECORDED) != new.get(k, _NOT_RECORDED)}
    done = int(ckpt.get("epoch", 0))
    if config["epochs"] < done:
        differ["epochs"] = (f"{done} already run", config["epochs"])
    return differ


def seconds_per_step(model: torch.nn.Module, splits: Splits, cfg: TrainConfig, device, steps: int = 2) -> float:
    """Seconds of one training step of `model` at cfg.batch_size on `device` (median of `steps`, after one
    untimed step), on a copy: an epoch's cost known before it starts. The random state is left as it was."""
    import copy
    import statistics

    device = torch.device(device)
    channels_last = uses_channels_last(cfg, device)
    n = min(cfg.batch_size, len(splits.train))
    x = to_tensor(splits.train.images[:n], device, splits.mean, splits.std, channels_last)
    y = torch.as_tensor(splits.train.labels[:n], device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = copy.deepcopy(model).to(device, memory_format=torch.channels_last if channels_last
                                         else torch.contiguous_format).train()
        optimizer = make_optimizer(probe.parameters(), cfg)
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            with _autocast(device, cfg):
                loss = F.cross_entropy(probe(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def schedule_change(cfg: TrainConfig, epochs_before, done: int, steps_per_epoch: int) -> str:
    """What resuming with another number of epochs does to a schedule that depends on it, in one line ('' when
    nothing changes): the schedule is recomputed over the new length and the rate goes on from the step
    reached on that curve, so it jumps (a finished cosine run resumed for more epochs goes from near 0 back
    up to mid-curve)."""
    if cfg.schedule == "constant" or not epochs_before or epochs_before == cfg.epochs:
        return ""
    step = done * steps_per_epoch
    rate = lambda epochs: cfg.peak_lr * cfg.lr_factor(step, epochs * steps_per_epoch, steps_per_epoch)
    return (f"schedule {cfg.schedule} recomputed over {cfg.epochs} epochs instead of {epochs_before}: the learning "
            f"rate goes on from epoch {done} on the new curve, {rate(epochs_before):.3g} -> {rate(cfg.epochs):.3g} "
            "(the schedule does not start again from its top)")


def fit(model: torch.nn.Module, splits: Splits, cfg: TrainConfig, name: str, model_name: str, ckpt_dir: str | Path,
        device=None, teacher: torch.nn.Module | None = None, resume: bool = True, progress: bool | None = True,
        tensorboard_dir: str | Path | None = None) -> TrainResult:
    """Train `model` (an instance of `model_name`) on splits.train, choosing on splits.val.

    Each epoch logs train/val loss and accuracy, the train-val gap, learning rate, seconds and images/s
    to `<name>_log.csv`, and to TensorBoard under `tensorboard_dir` when given (and installed). With
    `teacher`, the loss is the distillation loss.
    `progress`: True, a bar over the batches (epoch, batches done, images/s, time left), wherever stdout
    goes; None, that bar on a terminal and one line per epoch elsewhere (logs, pipes); False, nothing.
    Resumes from `<name>_last.pth` when it exists and was made with the same settings (epochs may grow:
    a schedule is then recomputed over the new length, and said so).
    """
    import pandas as pd

    device = torch.device(device or env.default_device())
    ckpt_dir = Path(ckpt_dir)
    best_path, last_path = ckpt_dir / f"{name}_best.pth", ckpt_dir / f"{name}_last.pth"
    log_path, sheet_path = ckpt_dir / f"{name}_log.csv", ckpt_dir / f"{name}_hparams.json"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    channels_last = uses_channels_last(cfg, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    if teacher is not None:
        teacher = teacher.to(device, memory_format=memory_format).eval().requires_grad_(False)

    loader = GpuLoader(splits.train, cfg.batch_size, device, splits.mean, splits.std, train=True,
                       cutout=cfg.cutout, seed=cfg.seed, channels_last=channels_last)
    val_x = to_tensor(splits.val.images, device, splits.mean, splits.std, channels_last)
    val_y = torch.as_tensor(splits.val.labels, device=device)
    optimizer = make_optimizer(model.parameters(), cfg)
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cfg.lr_factor(step, total_steps, steps_per_epoch))
    config = dataclasses.asdict(cfg)
    history, start_epoch, best_acc = [], 0, -1.0

    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path, model_name)
        differ = resume_mismatch(ckpt, config, splits.source, len(splits.train))
        if differ:
            changes = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in differ.items())
            raise ResumeRefused(f"cannot resume from {last_path}: {changes}; expected the settings it was "
                                "made with (epochs may only grow), or a fresh start (a new run folder, or "
                                "fit(..., resume=False))")
        load_weights(model, ckpt["state_dict"], last_path, model_name)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, history, best_acc = ckpt["epoch"], list(ckpt["history"]), ckpt["best_val_acc"]
        note = schedule_change(cfg, ckpt.get("config", {}).get("epochs"), start_epoch, steps_per_epoch)
        if note:
            print(f"{name}: {note}", flush=True)
        torch.set_rng_state(ckpt["rng_cpu"])
        loader.generator.set_state(ckpt["rng_loader"])
        if device.type == "cuda" and "rng_cuda" in ckpt:
            torch.cuda.set_rng_state(ckpt["rng_cuda"], device)

    def extra(epoch: int) -> dict:
        return {"config": config, "epoch": epoch, "history": history, "best_val_acc": best_acc,
                "data_source": splits.source, "train_images": len(splits.train), "versions": env.versions()}

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    writer = tensorboard_writer(tensorboard_dir)
    wall0 = time.perf_counter()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, unit="batch",
               desc=f"{name} epoch {start_epoch + 1}/{cfg.epochs}", file=sys.stdout, mininterval=2.0,
               disable=None if progress is None else not progress)
    epoch_lines = progress is None and bar.disable  # no terminal: a line per epoch instead of a bar
    last = ""
    for epoch in range(start_epoch, cfg.epochs):
        bar.set_description(f"{name} epoch {epoch + 1}/{cfg.epochs}", refresh=False)
        model.train()
        sync()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for x, y in loader:
            with _autocast(device, cfg):
                out = model(x)
                if teacher is None:
                    loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
                else:
                    with torch.no_grad():
                        t_out = teacher(x)
                    loss = distillation_loss(out, t_out, y, cfg.distill_T, cfg.distill_alpha, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
            if not bar.disable:  # images/s of this epoch so far (no device sync: counts, not values)
                bar.set_postfix_str(f"{seen / (time.perf_counter() - t0):,.0f} img/s{last}", refresh=False)
                bar.update()
        sync()
        seconds = time.perf_counter() - t0
        train_loss, train_acc = loss_sum.item() / seen, 100.0 * correct.item() / seen
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training diverged in epoch {epoch + 1}: the training loss is {train_loss}; "
                                   f"expected a finite loss: lower lr (now {cfg.lr:g}) or add a warm-up")
        with _autocast(device, cfg):
            val_loss, val_acc = evaluate(model, val_x, val_y)
        history.append({"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                        "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
                        "gap": train_acc - val_acc, "seconds": seconds, "images_per_s": seen / seconds})
        if val_acc > best_acc:
            best_acc = val_acc
            save_checkpoint(best_path, model, model_name, _num_classes(model), **extra(epoch + 1))
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            rng = {"rng_cpu": torch.get_rng_state(), "rng_loader": loader.generator.get_state()}
            if device.type == "cuda":
                rng["rng_cuda"] = torch.cuda.get_rng_state(device)
            save_checkpoint(last_path, model, model_name, _num_classes(model), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), **rng, **extra(epoch + 1))
        with atomic.atomic_path(log_path) as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)
        if writer is not None:
            for key, value in (("train/loss", train_loss), ("train/acc", train_acc), ("val/loss", val_loss),
                               ("val/acc", val_acc), ("lr", history[-1]["lr"]), ("images_per_s", seen / seconds)):
                writer.add_scalar(key, value, epoch + 1)
            writer.flush()
        last = f"; epoch {epoch + 1}: loss {train_loss:.3f}, train {train_acc:.1f}%, val {val_acc:.2f}%"
        if not bar.disable:
            bar.set_postfix_str(f"{seen / seconds:,.0f} img/s{last}")
        if epoch_lines:
            print(f"{name} epoch {epoch + 1}/{cfg.epochs}: loss {train_loss:.4f}, train {train_acc:.2f}%, val "
                  f"{val_acc:.2f}%, {seen / seconds:,.0f} img/s, {seconds:.1f} s", flush=True)
    bar.close()
    if writer is not None:
        writer.close()
    wall = time.perf_counter() - wall0

    sheet = {"name": name, "model": model_name, "config": config, "peak_lr": cfg.peak_lr,
             "train_images": len(splits.train), "val_images": len(splits.val), "data_source": splits.source,
             "device": env.device_name(device), "versions": env.versions(), "git_commit": env.git_commit(),
             # beside this sheet: names, not this machine's paths (the folder may be copied elsewhere)
             "best_checkpoint": best_path.name, "last_checkpoint": last_path.name, "log": log_path.name,
             "best_val_acc": best_acc, "teacher": teacher is not None}
    atomic.write_text(sheet_path, json.dumps(sheet, indent=2))
    hist = pd.DataFrame(history)
    hist.attrs["label_smoothing"] = cfg.label_smoothing  # for the curves' title
    ran = hist[hist.epoch > start_epoch] if len(hist) else hist
    return TrainResult(hist, best_path, last_path, sheet_path, best_acc,
                       wall, float(ran.images_per_s.mean()) if len(ran) else float("nan"))


def _num_classes(model: torch.nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    return last.out_features


# ---------------------------------------------------------------- sanity checks (CIFAR-100 report, sections 2-3)

@torch.no_grad()
def initial_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Cross-entropy of an untrained model; should be near ln(num_classes)."""
    model.eval()
    return F.cross_entropy(model(images).float(), labels).item()


def overfit_batch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int = 150,
                  lr: float = 0.05, weight_decay: float = 0.0, progress: bool | None = False) -> list[float]:
    """Train on one small batch (no augmentation); the loss must go to near zero. `progress` as in `fit`
    (a bar over the steps; None: on a terminal only)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    losses = []
    for _ in tqdm(range(steps), desc="sanity: overfit", unit="step", file=sys.stdout, mininterval=1.0, leave=False,
                  disable=None if progress is None else not progress):
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def sanity_failures(checks: list[dict], num_classes: int, overfit: bool = True, loss_tolerance: float = 0.1,
                    overfit_max: float = 0.05) -> list[str]:
    """What is wrong in the sanity checks' results (rows with "model", "initial loss" and "loss after
    overfitting 64 images"): an initial loss farther than `loss_tolerance` from ln(num_classes), or (when
    `overfit`: enough steps were run) a memorised batch still above `overfit_max`. Empty when sane."""
    expected = math.log(num_classes)
    problems = []
    for c in checks:
        if not abs(c["initial loss"] - expected) <= loss_tolerance:
            problems.append(f"{c['model']}: initial loss {c['initial loss']:.4f}, expected ln({num_classes}) = "
                            f"{expected:.4f} +- {loss_tolerance}: check the head and the loss")
        if overfit and not c["loss after overfitting 64 images"] < overfit_max:
            problems.append(f"{c['model']}: 64 images not memorised (loss {c['loss after overfitting 64 images']:.4f}"
                            f" >= {overfit_max}): gradients or wiring are broken")
    return problems


def trivial_baselines(train_labels: np.ndarray, eval_labels: np.ndarray, num_classes: int, seed: int = 0) -> dict:
    """Accuracy (%) of predicting the majority training class, and of uniform random guesses."""
    majority = np.bincount(train_labels, minlength=num_classes).argmax()
    guesses = np.random.default_rng(seed).integers(0, num_classes, len(eval_labels))
    return {"majority class": 100.0 * float(np.mean(eval_labels == majority)),
            "uniform random": 100.0 * float(np.mean(eval_labels == guesses)),
            "chance (1/classes)": 100.0 / num_classes}

"""The FastNet training recipe: hyperparameters in one place, one short training loop.

Facts from the CIFAR-10 speed-training literature (airbench, hlb-CIFAR10, "How to train your ResNet"),
re-implemented here: a frozen 2x2 patch-whitening first layer (its bias trains for a few epochs),
identity-initialised convolutions, BatchNorm with frozen scales, SGD with Nesterov momentum in a
*decoupled* parametrisation (the step size does not move when momentum or batch size do; weight decay
does not move with the learning rate), a 64x larger step for BatchNorm shifts, label smoothing,
a triangular learning-rate schedule, lookahead-style weight averaging, random translation, flips and
optional cutout, bf16 autocast, the whole data set resident on the GPU.

Evidence that the recipe family reaches its accuracy: see outputs/sweep/ (the sweep command) and J2.

Why a second training loop beside `core.engine.fit` (which trains the light models, the teacher and the
toolkit's models): this recipe's parts do not fit fit's loop as hooks without bending it for every other
model. Its loss is summed over the batch and its step sizes are per 1024 examples, with two parameter
groups (BatchNorm shifts 64x faster); its schedule is a triangle counted in steps over a fractional
number of epochs; lookahead averaging rewrites the weights during the epoch; the whitening layer is
initialised from the data and frozen part-way; and there is no checkpoint choice (the final weights
are the result, so no validation pass picks among epochs). What the two loops share is imported from
core, never copied: the GPU-resident loader (core.data.GpuLoader), the distillation loss
(core.distill), bf16 autocast (core.engine.autocast), evaluation with or without the mirror
(core.engine.evaluate) and checkpoints (core.engine.save_checkpoint / load_model).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core import engine
from ..core.data import GpuLoader, Splits, to_tensor
from ..core.distill import DEFAULT_ALPHA, DEFAULT_T, distillation_loss
from ..core.models import FastNet


@dataclass(frozen=True)
class Recipe:
    epochs: float = 10.0
    batch_size: int = 1024
    lr: float = 11.5                  # step size per 1024 examples, independent of momentum
    momentum: float = 0.85            # Nesterov
    weight_decay: float = 0.0153      # per 1024 examples, independent of the learning rate
    bias_lr_scale: float = 64.0       # BatchNorm shifts move this much faster (not their decay)
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3       # then the whitening layer is frozen whole
    lr_start: float = 0.2             # triangular schedule: start, peak (at lr_peak_at of training), end
    lr_peak_at: float = 0.23
    lr_end: float = 0.07
    ema_start_epoch: int = 3          # lookahead averaging: from this epoch, every ema_every steps
    ema_every: int = 5
    ema_decay: float = 0.95           # per step, raised to ema_every, ramped by progress ** ema_decay_pow
    ema_decay_pow: float = 3.0
    translate: int = 2                # random translation, pixels (zero padding)
    cutout: int = 0                   # side of a square hole, pixels; 0 = off
    distill_T: float = DEFAULT_T      # with a teacher (J4-15): temperature and weight of the soft term
    distill_alpha: float = DEFAULT_ALPHA
    seed: int = 42

    def __post_init__(self):
        if self.epochs <= 0 or self.batch_size < 1:
            raise ValueError("a recipe needs epochs > 0 and batch_size >= 1")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), not {self.momentum}")

    def lr_factor(self, step: int, total: int) -> float:
        """Triangle: lr_start -> 1 at lr_peak_at of training -> lr_end at the last step."""
        peak = max(1, int(self.lr_peak_at * total))
        if step < peak:
            return self.lr_start + (1 - self.lr_start) * step / peak
        return 1 + (self.lr_end - 1) * min(1.0, (step - peak) / max(1, total - peak))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Named settings: the sweep and the notebooks refer to them by name. "short" is for narrow, plain nets;
# "long" for wide nets with three convolutions per group (more epochs, stronger augmentation).
RECIPES = {
    "short": Recipe(epochs=20.0),
    "long": Recipe(epochs=45.0, lr=9.0, weight_decay=0.012, translate=4, cutout=12, ema_start_epoch=10**6,
                   lr_start=0.2, lr_peak_at=0.1, lr_end=0.0),
}


def recipe_named(name: str, **changes) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return dataclasses.replace(RECIPES[name], **changes)


def for_profile(r: Recipe, profile) -> Recipe:
    """The recipe as a run profile allows it: smoke runs (a few hundred images) get at most the
    profile's epochs and small batches, so that they still take a few steps."""
    if profile.max_epochs is None:
        return r
    return dataclasses.replace(r, epochs=min(r.epochs, profile.max_epochs), batch_size=min(r.batch_size, 128))


def point_recipe(name: str, epochs: float | None = None) -> Recipe:
    """The recipe a sweep point names, with the point's own `epochs` when it sets them."""
    return recipe_named(name, **({"epochs": epochs} if epochs else {}))


@dataclass
class FastResult:
    model: FastNet
    history: list[dict]
    train_s: float          # wall time of the training loop (evaluation between epochs excluded)
    val_acc: float          # final weights, no test-time augmentation
    val_acc_mirror: float   # final weights, image + mirror averaged


def _optimizer(model: FastNet, r: Recipe) -> torch.optim.SGD:
    # Decoupled parametrisation: with Nesterov momentum m, steps are about 1 + 1/(1-m) times the raw
    # gradient, and the loss below is summed over the batch; divide both out of the step size.
    scale = 1024 * (1 + 1 / (1 - r.momentum))
    lr = r.lr / scale
    decay = r.weight_decay * r.batch_size / scale  # absolute decay per step
    shifts = [p for n, p in model.named_parameters() if ".norms." in n and p.requires_grad]
    others = [p for n, p in model.named_parameters() if ".norms." not in n and p.requires_grad]
    lr_shift = lr * r.bias_lr_scale
    return torch.optim.SGD([{"params": shifts, "lr": lr_shift, "weight_decay": decay / lr_shift, "base_lr": lr_shift},
                            {"params": others, "lr": lr, "weight_decay": decay / lr, "base_lr": lr}],
                           momentum=r.momentum, nesterov=True)


class _Lookahead:
    """Slow weights that follow the trained ones; the network is reset onto them at each update."""

    def __init__(self, model: torch.nn.Module):
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float) -> None:
        for k, v in model.state_dict().items():
            if k in self.slow:
                self.slow[k].lerp_(v, 1 - decay)
                v.copy_(self.slow[k])


def train_fastnet(splits: Splits, arch: dict, recipe: Recipe, device, num_classes: int = 10,
                  progress: bool = True, name: str = "fastnet", teacher: torch.nn.Module | None = None) -> FastResult:
    """Train a FastNet of architecture `arch` ({widths, convs, ...}) with `recipe` on splits.train;
    report validation accuracy of the final weights (the recipe has no checkpoint choice to make).
    With a `teacher` (frozen, same inputs), the loss is the distillation loss of `fastcifar.core.distill`."""
    device = torch.device(device)
    torch.manual_seed(recipe.seed)
    channels_last = device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = FastNet(num_classes, **arch).to(device)
    if teacher is not None:
        teacher = teacher.to(device, memory_format=memory_format).eval().requires_grad_(False)
    loader = GpuLoader(splits.train, min(recipe.batch_size, len(splits.train)), device, splits.mean, splits.std,
                       train=True, padding=recipe.translate, cutout=recipe.cutout, seed=recipe.seed,
                       channels_last=channels_last)
    # Whitening from (at most) 5,000 training images, normalised like the inputs.
    model.init_whitening(to_tensor(splits.train.images[:5000], device, splits.mean, splits.std))
    model = model.to(memory_format=memory_format)
    optimizer = _optimizer(model, recipe)
    steps_per_epoch = len(loader)
    total = max(1, math.ceil(recipe.epochs * steps_per_epoch))
    val_x = to_tensor(splits.val.images, device, splits.mean, splits.std, channels_last)
    val_y = torch.as_tensor(splits.val.labels, device=device)
    lookahead, step, history, train_s = None, 0, [], 0.0
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    bar = tqdm(range(math.ceil(recipe.epochs)), desc=name, disable=not progress, file=sys.stdout, mininterval=2.0)
    for epoch in bar:
        model.whiten.bias.requires_grad_(epoch < recipe.whiten_bias_epochs)
        model.train()
        sync()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for x, y in loader:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * recipe.lr_factor(step, total)
            with engine.autocast(device):
                out = model(x)
                if teacher is not None:
                    with torch.no_grad():
                        t_out = teacher(x)
            if teacher is None:
                loss = F.cross_entropy(out.float(), y, label_smoothing=recipe.label_smoothing, reduction="sum")
            else:  # summed over the batch like the plain loss, so the recipe's step sizes still hold
                loss = len(y) * distillation_loss(out, t_out, y, recipe.distill_T, recipe.distill_alpha,
                                                  recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.detach()
            seen += len(y)
            if epoch >= recipe.ema_start_epoch and step % recipe.ema_every == 0:
                if lookahead is None:
                    lookahead = _Lookahead(model)
                else:
                    decay = recipe.ema_decay ** recipe.ema_every * (step / total) ** recipe.ema_decay_pow
                    lookahead.update(model, decay)
            if step >= total:
                break
        if lookahead is not None:
            lookahead.update(model, 1.0)
        sync()
        train_s += time.perf_counter() - t0
        val_acc = engine.evaluate(model, val_x, val_y, bf16=True)[1]
        history.append({"epoch": epoch + 1, "train_loss": loss_sum.item() / max(1, seen), "val_acc": val_acc,
                        "seconds": train_s})
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val=f"{val_acc:.2f}")
    bar.close()
    model.eval()
    return FastResult(model.to(memory_format=torch.contiguous_format), history, train_s,
                      engine.evaluate(model, val_x, val_y, bf16=True)[1],
                      engine.evaluate(model, val_x, val_y, bf16=True, mirror=True)[1])


def train_and_save(splits: Splits, arch: dict, recipe: Recipe, device, path, name: str = "fastnet",
                   teacher: torch.nn.Module | None = None, progress: bool = True) -> FastResult:
    """Train (see `train_fastnet`) and save a checkpoint that `train.load_model` rebuilds, with the
    recipe, the per-epoch history and the validation accuracies beside the weights."""
    from ..core import env
    from ..core.engine import save_checkpoint

    result = train_fastnet(splits, arch, recipe, device, len(splits.classes), progress, name, teacher)
    save_checkpoint(path, result.model, "fastnet", len(splits.classes), recipe=recipe.to_dict(),
                    history=result.history, val_acc=result.val_acc, val_acc_mirror=result.val_acc_mirror,
                    train_s=result.train_s, distilled=teacher is not None, data_source=splits.source,
                    versions=env.versions())
    return result

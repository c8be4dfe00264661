"""The pieces behind the commands: the custom ResNet, CIFAR-100 coarse labels, the engine's new settings,
the LR finder's suggestion, evaluation metrics, the console script."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fastcifar import cli
from fastcifar.core import data, engine, env, models
from fastcifar.toolkit import evaluate, lr_finder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- the custom ResNet

def expected_params(blocks, widths, num_classes) -> int:
    """Parameters of the architecture as the report describes it, counted by hand."""
    conv = lambda c_in, c_out, k: c_in * c_out * k * k
    bn = lambda c: 2 * c
    total = conv(3, widths[0], 3) + bn(widths[0])
    c_in = widths[0]
    for stage, (n, c) in enumerate(zip(blocks, widths)):
        for j in range(n):
            first_in = c_in if j == 0 else c
            total += conv(first_in, c, 3) + bn(c) + conv(c, c, 3) + bn(c)
            if first_in != c or (j == 0 and stage > 0):  # projection where the width or the resolution changes
                total += conv(first_in, c, 1) + bn(c)
        c_in = c
    return total + widths[-1] * num_classes + num_classes


@pytest.mark.parametrize("blocks,widths", [([3, 3, 3], [64, 128, 256]), ([2, 2, 2], [48, 96, 192]), ([1, 2, 1], [8, 8, 16])])
def test_custom_resnet_has_the_reports_structure(blocks, widths):
    model = models.build_model("resnet_custom", 100, blocks=blocks, widths=widths)
    assert models.count_params(model) == expected_params(blocks, widths, 100)
    assert [len(stage) for stage in model.stages] == blocks
    assert model.stem[0].kernel_size == (3, 3) and isinstance(model.stem[1], nn.BatchNorm2d)
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d) and model.head.in_features == widths[-1]
    if widths[-1] > 64:
        return  # the forward pass below is checked on the small settings (seconds on a CPU otherwise)
    feats = model.stages(model.stem(torch.randn(2, 3, 32, 32)))
    assert feats.shape == (2, widths[-1], 8, 8)  # stages 2 and 3 halve the map
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_reports_final_setting_is_about_4_35_million_parameters():
    model = models.build_model("resnet_custom", 100, blocks=[3, 3, 3], widths=[64, 128, 256])
    assert round(models.count_params(model) / 1e6, 2) == 4.35


def test_checkpoint_rebuilds_the_custom_resnet(tmp_path):
    model = models.build_model("resnet_custom", 100, blocks=[1, 2, 1], widths=[8, 16, 24])
    path = engine.save_checkpoint(tmp_path / "m.pth", model, "resnet_custom", 100)
    loaded, ckpt = engine.load_model(path)
    assert loaded.arch == {"blocks": [1, 2, 1], "widths": [8, 16, 24]}
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded(x))


def test_custom_resnet_refuses_bad_shapes():
    with pytest.raises(ValueError, match="three positive"):
        models.build_model("resnet_custom", 10, blocks=[3, 3], widths=[64, 128, 256])
    with pytest.raises(ValueError, match="does not take"):
        models.build_model("resnet_custom", 10, depth=3)


# ---------------------------------------------------------------- CIFAR-100 data

def test_cifar100_keeps_coarse_labels_through_the_split(cifar100_any):
    gen = cifar100_any
    ds = data.load_cifar("cifar100", gen.base)
    np.testing.assert_array_equal(ds.train.labels, gen.train_labels)
    np.testing.assert_array_equal(ds.train.coarse_labels, gen.train_labels // 5)  # the generator's pairing
    assert ds.coarse_classes == [f"coarse{i}" for i in range(20)]
    splits = data.make_splits(ds, n_val=100)
    for split in (splits.train, splits.val, splits.test):
        np.testing.assert_array_equal(split.coarse_labels, split.labels // 5)
    assert splits.mean == data.CIFAR100_MEAN and splits.std == data.CIFAR100_STD
    assert np.bincount(splits.val.labels, minlength=100).tolist() == [1] * 100  # stratified


def test_cifar10_has_no_coarse_labels(cifar10_str):
    assert data.load_cifar("cifar10", cifar10_str.base).train.coarse_labels is None


def test_splits_for_takes_a_dataset_and_keeps_cifar10_by_default(cifar_factory):
    c10 = cifar_factory("cifar10")
    c100 = cifar_factory("cifar100", base=c10.base)  # both layouts side by side in one data folder
    run = SimpleNamespace(data_dir=c10.base, profile=env.Profile("smoke", 50, 20, 1, 1, 2, False, 1))
    default = data.splits_for(run, seed=0, n_val=20)
    assert len(default.classes) == 10 and default.mean == data.CIFAR10_MEAN
    hundred = data.splits_for(run, seed=0, n_val=100, dataset="cifar100")
    assert len(hundred.classes) == 100 and hundred.mean == data.CIFAR100_MEAN and len(hundred.train) == 50
    assert c100.folder.is_dir()


# ---------------------------------------------------------------- the engine's new settings

class Tiny(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def small_splits(n=64):
    rng = np.random.default_rng(0)
    make = lambda k: data.Split(rng.integers(0, 256, (k, 32, 32, 3), dtype=np.uint8), np.arange(k) % 10)
    return data.Splits(make(n), make(20), make(20), (0.5,) * 3, (0.25,) * 3, [str(i) for i in range(10)], "generated")


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_make_optimizer(name, cls):
    cfg = engine.TrainConfig(optimizer=name, lr=0.002, batch_size=128, base_batch=128, weight_decay=1e-4)
    opt = engine.make_optimizer(Tiny().parameters(), cfg)
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.002 and opt.param_groups[0]["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="optimizer"):
        engine.TrainConfig(optimizer="rmsprop")


def test_constant_schedule_keeps_the_rate(tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, "tiny", lambda num_classes=10: Tiny(num_classes))
    cfg = engine.TrainConfig(epochs=2, batch_size=16, base_batch=16, lr=0.003, optimizer="adam", schedule="constant",
                            bf16=False, channels_last=False)
    assert [cfg.lr_factor(s, 100, 10) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    result = engine.fit(Tiny(), small_splits(), cfg, "t", "tiny", tmp_path, "cpu", progress=False)
    assert (result.history.lr == 0.003).all()
    assert engine.load_checkpoint(result.last_path)["optimizer"]["param_groups"][0]["betas"]  # Adam's state


def test_checkpoints_from_before_the_optimizer_setting_still_resume(tmp_path, monkeypatch):
    monkeypatch.setitem(models.MODELS, "tiny", lambda num_classes=10: Tiny(num_classes))
    cfg = engine.TrainConfig(epochs=1, batch_size=16, bf16=False, channels_last=False)
    engine.fit(Tiny(), small_splits(), cfg, "t", "tiny", tmp_path, "cpu", progress=False)
    last = tmp_path / "t_last.pth"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["config"]["optimizer"]  # as written before the setting existed (SGD then)
    torch.save(ckpt, last)
    longer = engine.fit(Tiny(), small_splits(), engine.TrainConfig(epochs=2, batch_size=16, bf16=False,
                                                                channels_last=False),
                       "t", "tiny", tmp_path, "cpu", progress=False)
    assert list(longer.history.epoch) == [1, 2]
    with pytest.raises(engine.CheckpointError, match="optimizer: 'sgd' -> 'adam'"):
        engine.fit(Tiny(), small_splits(), engine.TrainConfig(epochs=3, batch_size=16, bf16=False, channels_last=False,
                                                           optimizer="adam"),
                  "t", "tiny", tmp_path, "cpu", progress=False)


# ---------------------------------------------------------------- LR finder and evaluation

def test_lr_finder_suggestion_on_a_known_curve():
    lrs = np.logspace(-6, 0, 121)
    x = np.log10(lrs)
    loss = 2.3 - 1.5 / (1 + np.exp(-(x + 3) * 4))  # falls fastest at 1e-3
    loss = np.where(x > -1.5, loss + (x + 1.5) ** 2 * 8, loss)  # then blows up
    noise = np.random.default_rng(0).normal(0, 0.05, len(lrs))
    sweep = pd.DataFrame({"lr": lrs, "loss": loss + noise, "smoothed": loss})
    s = lr_finder.suggest(sweep, smoothing=0.9)
    assert math.log10(s["steepest_lr"]) == pytest.approx(-3, abs=0.15)  # within 0.15 decade
    assert s["range"][0] < 1e-3 < s["range"][1] and s["range"][1] <= s["min_loss_lr"]
    assert -2.5 <= math.log10(s["min_loss_lr"]) <= -1.3  # on the floor after the drop, before the blow-up
    with pytest.raises(ValueError, match="at least 5"):
        lr_finder.suggest(sweep.head(3))


def test_centred_mean_does_not_lag():
    ramp = np.r_[np.zeros(50), np.ones(50)]  # a step at index 50
    mean = lr_finder.RunningMean(0.9)  # the one lr_range_test stops on
    running = np.array([mean.add(v) for v in ramp])
    both_ways = lr_finder.centred(ramp, 0.9)
    assert np.argmax(running > 0.5) > 55  # the running mean crosses half way late
    assert abs(np.argmax(both_ways > 0.5) - 50) <= 1  # the centred one at the step


def test_lr_range_test_grows_the_rate_and_stops_on_divergence():
    torch.manual_seed(0)
    model = Tiny()
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    cfg = engine.TrainConfig(optimizer="sgd", bf16=False)
    sweep = lr_finder.lr_range_test(model, [(x, y)] * 4, cfg, "cpu", 1e-4, 1e4, 60, progress=False)
    assert sweep.lr.is_monotonic_increasing and sweep.lr.iloc[0] == pytest.approx(1e-4)
    assert len(sweep) < 60  # a rate of 1e4 diverges long before the end
    mean = lr_finder.RunningMean(0.95)  # the sweep's smoothed column is that mean of its losses
    assert sweep.smoothed.tolist() == pytest.approx([mean.add(v) for v in sweep.loss])


def test_metrics_on_known_logits():
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0], [0, 5.0, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6.0], [6.0, 5, 4, 3, 2, 1]])
    labels = np.array([0, 2, 0, 0])
    m = evaluate.metrics(logits, labels, 6)
    assert m["top1"] == 50.0 and m["top5"] == 75.0  # sample 3: label 0 is ranked last
    assert m["loss"] == pytest.approx(nn.functional.cross_entropy(logits, torch.as_tensor(labels)).item())
    assert m["confusion"][2, 1] == 1 and m["confusion"][0, 0] == 2 and m["confusion"][0, 5] == 1
    assert m["per_class"][0] == pytest.approx(200 / 3) and m["per_class"][2] == 0.0
    assert math.isnan(m["per_class"][1]) and m["per_class_images"] == [3, 0, 1, 0, 0, 0]


def test_console_script_lists_its_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("train", "lr_finder", "grid_search", "evaluate", "pipeline"))
    assert cli.main([]) == 2


# ---------------------------------------------------------------- progress, sanity lines, a resumed schedule

def test_fit_shows_progress_within_epochs_or_one_line_per_epoch(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(models.MODELS, "tiny", lambda num_classes=10: Tiny(num_classes))
    cfg = engine.TrainConfig(epochs=2, batch_size=16, base_batch=16, bf16=False, channels_last=False)
    engine.fit(Tiny(), small_splits(), cfg, "t", "tiny", tmp_path / "bar", "cpu", progress=True)
    bar = capsys.readouterr().out
    assert "t epoch 2/2" in bar and "8/8 [" in bar and "batch/s" in bar and "img/s" in bar  # 4 batches an epoch
    assert "epoch 2: loss" in bar.rsplit("\r", 1)[-1]  # the finished bar shows the last epoch's numbers
    engine.fit(Tiny(), small_splits(), cfg, "t", "tiny", tmp_path / "log", "cpu", progress=None)  # no terminal here
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("t epoch 2/2: loss ") and "img/s" in lines[1]
    engine.fit(Tiny(), small_splits(), cfg, "t", "tiny", tmp_path / "quiet", "cpu", progress=False)
    assert capsys.readouterr().out == ""


def test_sanity_checks_say_each_result_as_soon_as_it_is_known(monkeypatch):
    from fastcifar.core import sanity

    said, overfit = [], engine.overfit_batch

    def watched(*args, **kwargs):
        said.append("(overfit steps start)")
        return overfit(*args, **kwargs)

    monkeypatch.setattr(engine, "overfit_batch", watched)
    sanity.run_checks(Tiny(), small_splits(), "cpu", 0, overfit_images=8, overfit_steps=2, say=said.append)
    assert [line.split(" ")[0] for line in said] == ["baselines", "initial", "(overfit", "overfit"]


def test_resuming_a_cosine_schedule_with_more_epochs_goes_on_along_the_longer_curve(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(models.MODELS, "tiny", lambda num_classes=10: Tiny(num_classes))
    short = engine.TrainConfig(epochs=2, batch_size=16, base_batch=16, lr=0.004, schedule="cosine", bf16=False,
                               channels_last=False)
    engine.fit(Tiny(), small_splits(), short, "t", "tiny", tmp_path, "cpu", progress=False)
    assert capsys.readouterr().out == ""
    longer = engine.fit(Tiny(), small_splits(), dataclasses.replace(short, epochs=4), "t", "tiny", tmp_path, "cpu",
                        progress=False)
    said = capsys.readouterr().out
    assert "schedule cosine recomputed over 4 epochs instead of 2" in said and "0 -> 0.002" in said
    # epoch 3's last step is 3/4 of the way along the new cosine (the log records the rate after it)
    assert longer.history.lr.iloc[2] == pytest.approx(0.004 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert engine.schedule_change(dataclasses.replace(short, schedule="constant"), 2, 2, 4) == ""

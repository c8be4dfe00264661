import math

import numpy as np
import pytest
import torch
from torch import nn

from fastcifar.core import engine, models
from fastcifar.core.data import Split, Splits


class Tiny(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch):
    monkeypatch.setitem(models.MODELS, "tiny", lambda num_classes=10: Tiny(num_classes))


def splits(n_train=96, n_val=40, seed=0):
    rng = np.random.default_rng(seed)
    make = lambda n: Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10)
    return Splits(make(n_train), make(n_val), make(n_val), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                  [str(i) for i in range(10)], "generated")


def config(**kw):
    base = dict(epochs=3, batch_size=32, lr=0.05, bf16=False, channels_last=False, checkpoint_every=1, warmup_epochs=0.5)
    return engine.TrainConfig(**{**base, **kw})


def test_a_few_steps_lower_the_loss_on_a_small_batch():
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))  # enough capacity to memorise 16 images
    losses = engine.overfit_batch(linear, x, y, steps=30, lr=0.01)
    assert losses[-1] < 0.1 * losses[0]


def test_initial_loss_near_log_classes():
    model = Tiny()
    nn.init.zeros_(model.fc.weight)
    nn.init.zeros_(model.fc.bias)
    assert engine.initial_loss(model, torch.randn(8, 3, 32, 32), torch.arange(8)) == pytest.approx(math.log(10), rel=1e-5)


def test_fit_writes_checkpoints_log_and_sheet(tmp_path):
    torch.manual_seed(0)
    res = engine.fit(Tiny(), splits(), config(), "tiny", "tiny", tmp_path, "cpu", progress=False)
    for path in (res.best_path, res.last_path, res.sheet_path, tmp_path / "tiny_log.csv"):
        assert path.is_file()
    h = res.history
    assert list(h.epoch) == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "gap", "lr", "seconds", "images_per_s"} <= set(h.columns)
    assert res.best_val_acc == pytest.approx(h.val_acc.max())
    best = engine.load_checkpoint(res.best_path, "tiny")
    assert best["epoch"] == int(h.val_acc.idxmax()) + 1  # best by validation accuracy
    assert not list(tmp_path.glob("*.tmp*"))


def test_resume_after_an_interruption_gives_the_same_weights(tmp_path, monkeypatch):
    torch.manual_seed(0)
    straight = engine.fit(Tiny(), splits(), config(), "a", "tiny", tmp_path / "a", "cpu", progress=False)

    real_evaluate, calls = engine.evaluate, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # during the third epoch's evaluation
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", interrupted)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        engine.fit(Tiny(), splits(), config(), "b", "tiny", tmp_path / "b", "cpu", progress=False)
    monkeypatch.setattr(engine, "evaluate", real_evaluate)
    assert engine.load_checkpoint(tmp_path / "b" / "b_last.pth")["epoch"] == 2
    resumed = engine.fit(Tiny(), splits(), config(), "b", "tiny", tmp_path / "b", "cpu", progress=False)
    assert list(resumed.history.epoch) == [1, 2, 3]
    a = engine.load_checkpoint(straight.last_path)["state_dict"]
    b = engine.load_checkpoint(resumed.last_path)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_resume_refuses_other_settings_and_names_only_what_differs(tmp_path):
    engine.fit(Tiny(), splits(), config(epochs=1), "t", "tiny", tmp_path, "cpu", progress=False)
    with pytest.raises(engine.CheckpointError) as info:
        engine.fit(Tiny(), splits(), config(epochs=2, lr=0.3), "t", "tiny", tmp_path, "cpu", progress=False)
    msg = str(info.value)
    assert "lr: 0.05 -> 0.3" in msg
    assert "momentum" not in msg and "weight_decay" not in msg  # only the keys that differ


def test_resume_refuses_other_training_data(tmp_path):
    engine.fit(Tiny(), splits(), config(epochs=1), "t", "tiny", tmp_path, "cpu", progress=False)
    other = splits(seed=1)
    other.source = "generated, other pixels"
    with pytest.raises(engine.CheckpointError, match=r"data_source: 'generated' -> 'generated, other pixels'"):
        engine.fit(Tiny(), other, config(epochs=2), "t", "tiny", tmp_path, "cpu", progress=False)


def test_resume_refuses_another_training_set_size(tmp_path):
    engine.fit(Tiny(), splits(), config(epochs=1), "t", "tiny", tmp_path, "cpu", progress=False)
    with pytest.raises(engine.CheckpointError, match="train_images: 96 -> 64") as info:
        engine.fit(Tiny(), splits(n_train=64), config(epochs=2), "t", "tiny", tmp_path, "cpu", progress=False)
    assert "data_source" not in str(info.value)


def test_resume_refuses_fewer_epochs_than_already_run(tmp_path):
    engine.fit(Tiny(), splits(), config(epochs=3), "t", "tiny", tmp_path, "cpu", progress=False)
    with pytest.raises(engine.CheckpointError, match="epochs: '3 already run' -> 2"):
        engine.fit(Tiny(), splits(), config(epochs=2), "t", "tiny", tmp_path, "cpu", progress=False)
    more = engine.fit(Tiny(), splits(), config(epochs=4), "t", "tiny", tmp_path, "cpu", progress=False)
    assert list(more.history.epoch) == [1, 2, 3, 4]  # more epochs than the checkpoint's may resume


def test_save_then_load_gives_the_same_state(tmp_path):
    model = Tiny()
    path = engine.save_checkpoint(tmp_path / "m.pth", model, "tiny", 10, epoch=4)
    loaded, ckpt = engine.load_model(path)
    assert ckpt["epoch"] == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_damaged_checkpoints_are_refused_clearly(tmp_path):
    path = engine.save_checkpoint(tmp_path / "m.pth", Tiny(), "tiny", 10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(engine.CheckpointError, match="damaged"):
        engine.load_model(path)
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(engine.CheckpointError, match="not a"):
        engine.load_checkpoint(tmp_path / "other.pth")
    with pytest.raises(engine.CheckpointError, match="no checkpoint"):
        engine.load_checkpoint(tmp_path / "missing.pth")


def test_mismatched_checkpoints_are_refused(tmp_path):
    path = engine.save_checkpoint(tmp_path / "m.pth", Tiny(), "tiny", 10)
    with pytest.raises(engine.CheckpointError, match="expected 'resnet18'"):
        engine.load_checkpoint(path, "resnet18")
    wrong = engine.save_checkpoint(tmp_path / "w.pth", Tiny(num_classes=7), "tiny", 10)
    with pytest.raises(engine.CheckpointError, match="do not fit"):
        engine.load_model(wrong)


def test_schedules():
    cfg = engine.TrainConfig(epochs=10, warmup_epochs=1)
    total, per_epoch = 100, 10
    f = [cfg.lr_factor(s, total, per_epoch) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:])) and f[-1] < 0.01
    multi = engine.TrainConfig(epochs=10, schedule="multistep")
    assert [multi.lr_factor(s, total, per_epoch) for s in (0, 49, 50, 75)] == pytest.approx([1, 1, 0.1, 0.01])
    assert engine.TrainConfig(lr=0.1, batch_size=512).peak_lr == pytest.approx(0.4)
    with pytest.raises(ValueError):
        engine.TrainConfig(schedule="linear")


def test_evaluate_and_baselines():
    x = torch.randn(30, 3, 32, 32)
    y = torch.arange(30) % 10
    oracle = lambda images: nn.functional.one_hot(y, 10).float() * 10  # right answers, one batch of 30
    loss, acc = engine.evaluate(oracle, x, y, batch_size=30)
    assert acc == 100.0 and loss < 0.01
    base = engine.trivial_baselines(np.array([1, 1, 1, 2]), np.array([1, 2, 3, 1]), 10)
    assert base["majority class"] == 50.0 and base["chance (1/classes)"] == 10.0
    assert 0 <= base["uniform random"] <= 100

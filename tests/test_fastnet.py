"""FastNet, its recipe and the sweep, on the CPU with tiny generated data."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fastcifar.core import data, engine, env, models, optimize
from fastcifar.series import records, recipe, sweep


def trained_like(model: models.FastNet, seed: int = 0) -> models.FastNet:
    """Give the BatchNorms non-trivial running statistics (a few train-mode passes), then eval."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32) * 1.5 + 0.2)
    return model.eval()


@pytest.mark.parametrize("convs", [2, 3])
def test_shapes_and_spatial_sizes(convs):
    model = models.build_model("fastnet", widths=(8, 16, 24), convs=convs).eval()
    sizes = []
    x = model.act(model.whiten(torch.randn(2, 3, 32, 32)))
    sizes.append(x.shape[-1])
    for group in model.groups:
        x = group(x)
        sizes.append(x.shape[-1])
    assert sizes == [31, 15, 7, 3]  # 2x2 whitening, then three pools (floor)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert models.build_model("fastnet", num_classes=100, widths=(8, 8, 8))(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_parameter_count_matches_the_architecture():
    w1, w2, w3 = 16, 32, 64
    for convs in (2, 3):
        model = models.build_model("fastnet", widths=(w1, w2, w3), convs=convs)
        convs_params = sum(cin * cout * 9 + (convs - 1) * cout * cout * 9 for cin, cout in ((24, w1), (w1, w2), (w2, w3)))
        bn = 2 * convs * (w1 + w2 + w3)  # frozen scale + shift per channel
        expected = (3 * 24 * 4 + 24) + convs_params + bn + w3 * 10
        assert models.count_params(model) == expected
    # the airbench94-like point of the sweep: about 2.0 M parameters
    assert 1.9e6 < models.count_params(models.build_model("fastnet", widths=(64, 256, 256))) < 2.0e6


def test_bad_architectures_are_refused():
    with pytest.raises(ValueError, match="2 or 3 convolutions"):
        models.build_model("fastnet", widths=(8, 8, 8), convs=4)
    with pytest.raises(ValueError, match="three positive widths"):
        models.build_model("fastnet", widths=(8, 8))
    with pytest.raises(ValueError, match="does not take"):
        models.build_model("resnet18", widths=(8, 8, 8))


@pytest.mark.parametrize("convs", [2, 3])
def test_folding_keeps_the_outputs(convs):
    model = trained_like(models.build_model("fastnet", widths=(8, 16, 24), convs=convs))
    folded = optimize.fold_batchnorm(model)  # delegates to FastNet.fold_batchnorm
    x = torch.randn(16, 3, 32, 32)
    ref = model(x)
    assert torch.allclose(folded(x), ref, atol=1e-5 * ref.abs().max().item() + 1e-6)
    assert folded.folded_batchnorms == 3 * convs
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert folded.head_scale == 1.0


def test_folding_refuses_a_negative_scale():
    model = trained_like(models.build_model("fastnet", widths=(8, 8, 8)))
    with torch.no_grad():
        model.groups[0].norms[0].weight[0] = -1.0  # a max-pool does not commute with a negative scale
    with pytest.raises(ValueError, match="not positive"):
        model.fold_batchnorm()


def test_whitening_decorrelates_patches():
    torch.manual_seed(0)
    model = models.FastNet(widths=(8, 8, 8))
    images = torch.nn.functional.avg_pool2d(torch.randn(64, 3, 34, 34), 3, 1)  # smooth: correlated patches
    model.init_whitening(images)
    out = model.whiten(images)[:, :12] - model.whiten.bias[:12].view(1, -1, 1, 1)
    f = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(f.T)
    top = cov.diagonal()[:4]
    assert torch.allclose(top, torch.ones(4), atol=0.05)  # the leading directions get unit variance
    off = cov - torch.diag(cov.diagonal())
    assert off.abs().max() < 0.05
    assert not model.whiten.weight.requires_grad
    assert torch.equal(model.whiten.weight[:12], -model.whiten.weight[12:])


def test_mirror_variant_averages_the_image_and_its_flip():
    model = trained_like(models.build_model("fastnet", widths=(8, 8, 16)))
    variant = optimize.build(model, optimize.Spec(mirror=True), torch.randn(1, 3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    expected = 0.5 * (model(x) + model(x.flip(3)))
    assert torch.allclose(variant(x), expected, atol=1e-6)
    assert "mirror TTA" in variant.spec.label


def test_checkpoint_rebuilds_the_architecture(tmp_path):
    model = trained_like(models.build_model("fastnet", widths=(8, 16, 24), convs=3))
    path = engine.save_checkpoint(tmp_path / "f.pth", model, "fastnet", 10)
    back, ckpt = engine.load_model(path)
    assert ckpt["arch"]["widths"] == [8, 16, 24] and ckpt["arch"]["convs"] == 3
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), model(x))
    assert models.label("fastnet", back.arch) == "FastNet 8/16/24 x3"


# ---------------------------------------------------------------- recipe

def test_recipe_schedule_is_a_triangle():
    r = recipe.Recipe(lr_start=0.2, lr_peak_at=0.25, lr_end=0.1)
    total = 100
    f = [r.lr_factor(s, total) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.2) and max(f) == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert int(np.argmax(f)) == 25
    assert all(a <= b for a, b in zip(f[:25], f[1:26])) and all(a >= b for a, b in zip(f[25:], f[26:]))


def test_recipe_names_and_bad_values():
    assert recipe.recipe_named("long").epochs > recipe.recipe_named("short").epochs
    assert recipe.point_recipe("short", 3).epochs == 3
    assert recipe.point_recipe("long", None) == recipe.recipe_named("long")  # None: the recipe's own epochs
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe.recipe_named("fast")
    with pytest.raises(ValueError, match="momentum"):
        recipe.Recipe(momentum=1.0)
    smoke = recipe.for_profile(recipe.recipe_named("long"), env.PROFILES["smoke"])
    assert smoke.epochs == 1 and smoke.batch_size <= 128
    assert recipe.for_profile(recipe.recipe_named("long"), env.PROFILES["full"]) == recipe.recipe_named("long")


@pytest.fixture
def tiny_splits(cifar_factory):
    gen = cifar_factory("cifar10", per_file=60)
    return data.make_splits(data.load_cifar("cifar10", gen.base), n_val=50, seed=0)


def test_training_learns_and_saves(tiny_splits, tmp_path, one_torch_thread):
    r = recipe.Recipe(epochs=2, batch_size=64, translate=2, cutout=4, ema_start_epoch=1, ema_every=1)
    path = tmp_path / "fast.pth"
    result = recipe.train_and_save(tiny_splits, {"widths": [8, 8, 16], "convs": 2}, r, "cpu", path, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    assert 0 <= result.val_acc <= 100 and 0 <= result.val_acc_mirror <= 100
    model, ckpt = engine.load_model(path)
    assert ckpt["recipe"]["epochs"] == 2 and ckpt["distilled"] is False
    assert not result.model.whiten.weight.requires_grad  # whitening stays frozen in training
    assert torch.equal(model.whiten.weight, result.model.whiten.weight)


def test_distillation_uses_the_teacher(tiny_splits, one_torch_thread):
    class Constant(torch.nn.Module):  # a "teacher" that always says class 3
        def forward(self, x):
            out = torch.full((len(x), 10), -5.0)
            out[:, 3] = 5.0
            return out

    r = recipe.Recipe(epochs=3, batch_size=64, lr=20.0, distill_alpha=1.0, label_smoothing=0.0, ema_start_epoch=99)
    result = recipe.train_fastnet(tiny_splits, {"widths": [8, 8, 16], "convs": 2}, r, "cpu", progress=False,
                                  teacher=Constant())
    x, _ = tiny_splits.tensors("val", "cpu")
    predicted = result.model(x).argmax(1)
    assert (predicted == 3).float().mean() > 0.9  # with alpha = 1 only the teacher's soft labels count


# ---------------------------------------------------------------- sweep and selection

def sweep_table():
    rows = []
    for point, (val, val_m, p95, p95_m) in {"a": (80.0, 82.0, 0.10, 0.11), "b": (86.0, 87.0, 0.12, 0.13),
                                            "c": (92.0, 93.5, 0.20, 0.21), "d": (93.0, 94.0, 0.30, 0.29)}.items():
        rows.append({"id": point, "point": point, "mirror": False, "val_accuracy": val, "accuracy": val - 1,
                     "lat_p95_ms": p95})
        rows.append({"id": point + "+mirror", "point": point, "mirror": True, "val_accuracy": val_m,
                     "accuracy": val_m - 1, "lat_p95_ms": p95_m})
    return pd.DataFrame(rows)


def test_selection_uses_validation_and_latency_only():
    df = sweep_table()
    chosen = sweep.select(df, 85.0, 93.2)
    assert chosen["F1"].id == "b" and chosen["F1"].met
    assert chosen["F2"].id == "c+mirror" and chosen["F2"].met and chosen["F2"].mirror
    # the test column plays no part: change it and nothing moves
    df2 = df.assign(accuracy=100 - df.accuracy)
    assert sweep.select(df2, 85.0, 93.2) == chosen
    missed = sweep.select(df, 85.0, 99.0)["F2"]
    assert not missed.met and missed.id == "d+mirror"  # the most accurate, flagged


def test_chosen_points_roundtrip_and_missing_record(tmp_path):
    record = {"version": records.SweepRecord.VERSION,
              "chosen": {"F1": {"point": "b", "id": "b", "mirror": False, "threshold": 85.0, "met": True,
                                "val_accuracy": 86.0, "lat_p95_ms": 0.12}},
              "points": {"b": {"arch": {"widths": [8, 8, 8], "convs": 2}, "recipe": "short", "epochs": None}},
              "floor_p95_ms": None, "teacher_val": None, "profile": "smoke", "device_name": "cpu", "torch": "2",
              "data_source": "generated", "git_commit": "abc"}
    (tmp_path / "chosen.json").write_text(json.dumps(record))
    got = sweep.chosen_points(tmp_path / "chosen.json")
    assert got["F1"].arch["widths"] == [8, 8, 8] and got["F1"].recipe == "short"
    with pytest.raises(records.RecordError, match="fastcifar.sweep"):
        sweep.chosen_points(tmp_path / "none.json")


def test_smoke_sweep_end_to_end(cifar_factory, tmp_path, monkeypatch, one_torch_thread):
    gen = cifar_factory("cifar10", per_file=60)
    profile = env.PROFILES["smoke"]
    df, record = sweep.run_sweep(tmp_path / "out", profile, sweep.SMOKE_POINTS[:1], teacher_val=50.0,
                                 data_dir=gen.base, progress=False, n_val=50)
    assert list(df.id) == ["w8", "w8+mirror"]
    assert (df.profile == "smoke").all() and df.device_name.str.startswith("cpu").all()
    for name in ("sweep.csv", "sweep.md", "sweep_pareto.png", "chosen.json"):
        assert (tmp_path / "out" / name).is_file()
    assert set(record.chosen) == {"F1", "F2"} and record.floor_p95_ms is None
    assert records.read(records.SweepRecord, tmp_path / "out" / "chosen.json") == record


def test_sweep_command_rejects_unknown_points(capsys):
    assert sweep.main(["--profile", "smoke", "--points", "w999"]) == 2
    err = capsys.readouterr().err
    assert "unknown points" in err and "the smoke profile's points" in err


def test_sweep_command_checks_its_output_folder_and_data_before_training(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    trained = []
    monkeypatch.setattr(sweep, "measure_point", lambda *a, **k: trained.append(a) or ([], None))
    assert sweep.main(["--profile", "smoke", "--out", str(a_file), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write to" in err and "--out" in err and err.count("\n") == 0
    monkeypatch.setenv("FASTCIFAR_DATA", str(tmp_path / "nowhere"))
    assert sweep.main(["--profile", "smoke", "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweep: error:") and err.count("\n") == 0 and not trained


def test_the_notebooks_read_the_sweep_record_where_the_sweep_writes_it(tmp_path, monkeypatch):
    root = tmp_path / "project"
    monkeypatch.setenv("FASTCIFAR_OUTPUTS", str(tmp_path / "outs"))
    committed = root / "outputs" / "sweep" / "chosen.json"
    assert sweep.record_path(None, root) == committed  # nothing written elsewhere: the committed record
    written = tmp_path / "outs" / "sweep" / "chosen.json"
    written.parent.mkdir(parents=True)
    written.write_text("{}")
    assert sweep.record_path(None, root) == written
    assert sweep.record_path("mine/chosen.json", root) == root / "mine" / "chosen.json"

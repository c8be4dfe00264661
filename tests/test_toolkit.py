"""The config-driven commands end to end on a generated CIFAR-100 in the official cifar-100-python/ layout
(400 training images, 200 test images), plus config errors and overrides."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import make_cifar
from fastcifar import cli
from fastcifar.core import engine, models
from fastcifar.toolkit import commands, config, evaluate, grid_search, lr_finder, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
CIFAR100_YAML = ROOT / "configs" / "cifar100.yaml"

# A tiny model and a few steps: every command runs in about a second on a CPU.
TINY = ["val_size=100", "blocks=[1,1,1]", "widths=[8,16,32]", "batch_size=64", "max_epochs=2", "overfit_images=16",
        "overfit_steps=4", "lr_finder_steps=12", "grid_epochs=1", "grid_lr=[0.001,0.003]", "grid_weight_decay=[1.0e-4]",
        "grid_blocks=[[1,1,1]]", "grid_widths=[[8,16,32],[4,8,16]]", "device=cpu", "progress=false"]


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return make_cifar(base, "cifar100", per_file=400)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


def args(cifar100, outputs, *extra):
    return ["--config", str(CIFAR100_YAML), f"data_dir={cifar100.base}", f"output_dir={outputs}", *TINY, *extra]


def only_run(outputs: Path, command: str, before: set) -> Path:
    new = set((outputs / "cifar100").glob(f"{command}-*")) - before
    assert len(new) == 1, new
    return new.pop()


def runs(outputs: Path, command: str) -> set:
    return set((outputs / "cifar100").glob(f"{command}-*"))


@pytest.fixture(scope="module")
def trained(cifar100, outputs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_torch_thread does, for this module-wide run
    before = runs(outputs, "train")
    try:
        assert train.main(args(cifar100, outputs)) == 0
    finally:
        torch.set_num_threads(threads)
    return only_run(outputs, "train", before)


# ---------------------------------------------------------------- the four commands

def test_train_writes_checks_checkpoints_logs_and_a_repeatable_record(trained, cifar100):
    for name in ("config.yaml", "run.json", "sanity.json", "overfit.png", "model_best.pth", "model_last.pth",
                 "model_log.csv", "curves.png", "summary.json"):
        assert (trained / name).is_file(), name
    record = json.loads((trained / "run.json").read_text())
    assert record["status"] == "finished" and record["seed"] == 42 and record["git_commit"]
    assert {"torch", "python", "cuda"} <= set(record["versions"])
    assert record["config"]["max_epochs"] == 2 and record["config"]["blocks"] == [1, 1, 1]
    assert "sha256:" in record["data"]["source"] and len(record["data"]["split_sha256"]) == 12
    # 400 official training images: 100 validation images stratified over 100 classes, one each
    assert (record["data"]["train_images"], record["data"]["val_images"], record["data"]["test_images"]) == (300, 100, 200)
    log = pd.read_csv(trained / "model_log.csv")
    assert list(log.epoch) == [1, 2] and (log.lr == 0.002).all()  # constant schedule, lr as given
    summary = json.loads((trained / "summary.json").read_text())
    assert (summary["best_checkpoint"], summary["log_csv"]) == ("model_best.pth", "model_log.csv")  # in the folder
    model, ckpt = engine.load_model(trained / "model_best.pth")
    assert ckpt["num_classes"] == 100 and ckpt["arch"] == {"blocks": [1, 1, 1], "widths": [8, 16, 32]}
    assert ckpt["config"]["optimizer"] == "adam"
    assert isinstance(model, models.ResNetCustom)
    checks = json.loads((trained / "sanity.json").read_text())
    assert checks["initial_loss"]["expected_ln_classes"] == pytest.approx(math.log(100))
    assert len(checks["overfit"]["losses"]) == 4 and checks["overfit"]["images"] == 16
    assert checks["baselines_pct"]["val"]["chance (1/classes)"] == pytest.approx(1.0)


def test_a_run_repeats_from_its_resolved_config_alone(trained, outputs):
    before = runs(outputs, "train")
    assert train.main(["--config", str(trained / "config.yaml")]) == 0
    again = only_run(outputs, "train", before)
    first, second = (json.loads((r / "run.json").read_text()) for r in (trained, again))
    assert first["config"] == second["config"] and first["data"] == second["data"]
    a, b = (pd.read_csv(r / "model_log.csv") for r in (trained, again))
    np.testing.assert_allclose(a[["train_loss", "val_loss", "val_acc"]], b[["train_loss", "val_loss", "val_acc"]],
                               rtol=1e-5)


def test_evaluate_reports_loss_top1_top5_per_class_and_confusion(trained, cifar100, outputs):
    before = runs(outputs, "evaluate")
    status = evaluate.main(["--config", str(trained / "config.yaml"), "--checkpoint", str(trained / "model_best.pth")])
    assert status == 0
    run = only_run(outputs, "evaluate", before)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] == 200
    # the checkpoint as seen from this run folder, not a path of this machine
    assert metrics["checkpoint"] == f"../{trained.name}/model_best.pth" == os.path.relpath(trained / "model_best.pth", run)
    assert json.loads((run / "run.json").read_text())["checkpoint"] == metrics["checkpoint"]
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100 and "superclass_top1" in metrics
    # the same numbers from the checkpoint, computed here independently
    model, _ = engine.load_model(trained / "model_best.pth")
    x = torch.as_tensor(cifar100.test_data.reshape(-1, 3, 32, 32)).float() / 255
    mean, std = torch.tensor(config.data.CIFAR100_MEAN), torch.tensor(config.data.CIFAR100_STD)
    with torch.no_grad():
        logits = model((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    y = torch.as_tensor(cifar100.test_labels)
    assert metrics["top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item(), abs=1e-6)
    assert metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-4)
    per_class = pd.read_csv(run / "per_class.csv")
    assert len(per_class) == 100 and per_class.images.sum() == 200
    confusion = pd.read_csv(run / "confusion_matrix.csv", index_col=0)
    assert confusion.shape == (100, 100) and confusion.to_numpy().sum() == 200
    assert np.trace(confusion.to_numpy()) == round(metrics["top1"] * 2)
    assert (run / "confusion_matrix.png").is_file()


def test_lr_finder_sweeps_exponentially_and_suggests_inside_its_range(cifar100, outputs):
    before = runs(outputs, "lr_finder")
    assert cli.main(["lr-finder", *args(cifar100, outputs, "lr_finder_min=1.0e-5", "lr_finder_max=0.1")]) == 0
    run = only_run(outputs, "lr_finder", before)
    sweep = pd.read_csv(run / "lr_finder.csv")
    assert 5 <= len(sweep) <= 12 and sweep.lr.iloc[0] == pytest.approx(1e-5)
    ratios = sweep.lr.to_numpy()[1:] / sweep.lr.to_numpy()[:-1]
    np.testing.assert_allclose(ratios, (0.1 / 1e-5) ** (1 / 11), rtol=1e-9)  # one factor per step
    suggestion = json.loads((run / "lr_finder.json").read_text())
    low, high = suggestion["range"]
    assert low <= suggestion["value"] <= high and suggestion["optimizer"] == "adam"
    assert (run / "lr_finder.png").is_file()


def test_grid_search_trains_every_point_and_picks_the_best_on_validation(cifar100, outputs):
    before = runs(outputs, "grid_search")
    assert grid_search.main(args(cifar100, outputs)) == 0
    run = only_run(outputs, "grid_search", before)
    results = pd.read_csv(run / "grid_results.csv")
    assert len(results) == 4  # 2 lr x 1 weight decay x 1 blocks x 2 widths
    assert set(results.lr) == {0.001, 0.003} and set(results.widths) == {"[8, 16, 32]", "[4, 8, 16]"}
    best = grid_search.rank(results).iloc[0]
    assert best.best_val_acc == results.best_val_acc.max()
    chosen = yaml.safe_load((run / "best_config.yaml").read_text())
    assert chosen["lr"] == best.lr and str(chosen["widths"]) == best.widths and chosen["max_epochs"] == 2
    assert config.resolve(chosen, check_data=False)  # a valid config, ready for train
    assert "best val acc" in (run / "grid_results.md").read_text()
    assert (run / "grid_search.png").is_file()
    assert len(list((run / "points").glob("*_log.csv"))) == 4 and not list((run / "points").glob("*.pth"))


def test_grid_rank_uses_validation_accuracy_then_validation_loss():
    results = pd.DataFrame({"point": [1, 2, 3], "best_val_acc": [50.0, 60.0, 60.0], "final_val_loss": [1.0, 2.0, 1.5]})
    assert list(grid_search.rank(results).point) == [3, 2, 1]


# ---------------------------------------------------------------- config errors: one line, exit 2

def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def write_config(tmp_path, cifar100, **changes) -> Path:
    raw = yaml.safe_load(CIFAR100_YAML.read_text())
    raw.update({"data_dir": str(cifar100.base), "output_dir": str(tmp_path / "out"), **changes})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_key_suggests_the_nearest_one(tmp_path, cifar100, capsys):
    path = write_config(tmp_path, cifar100, max_epoch=3)
    assert train.main(["--config", str(path)]) == 2
    err = one_error_line(capsys)
    assert "max_epoch" in err and "did you mean 'max_epochs'" in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_wrong_type_names_the_key_and_what_was_expected(tmp_path, cifar100, capsys):
    path = write_config(tmp_path, cifar100, lr="fast")
    assert lr_finder.main(["--config", str(path)]) == 2
    err = one_error_line(capsys)
    assert "lr must be a number" in err and "'fast'" in err
    assert grid_search.main(["--config", str(path), "lr=0.01", "blocks=[3,3]"]) == 2
    assert "blocks must be a list of three integers" in one_error_line(capsys)
    assert train.main(["--config", str(path), "lr=0.01", "tensorboard=maybe"]) == 2
    assert "tensorboard must be true or false" in one_error_line(capsys)


def test_missing_data_folder(tmp_path, cifar100, capsys):
    path = write_config(tmp_path, cifar100, data_dir=str(tmp_path / "nowhere"))
    assert train.main(["--config", str(path)]) == 2
    err = one_error_line(capsys)
    assert "data_dir" in err and "cifar-100-python" in err


def test_other_user_mistakes_exit_2(tmp_path, cifar100, capsys):
    path = write_config(tmp_path, cifar100)
    assert train.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no file" in one_error_line(capsys)
    assert evaluate.main(["--config", str(path), "--checkpoint", str(tmp_path / "none.pth")]) == 2
    assert "--checkpoint" in one_error_line(capsys)
    assert train.main(["--config", str(path), "--max_epochs"]) == 2
    assert "has no value" in one_error_line(capsys)
    assert train.main(["--config", str(path), "--epochs", "3"]) == 2
    assert "did you mean 'max_epochs'" in one_error_line(capsys)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    assert train.main(["--config", str(bad)]) == 2
    assert "not valid YAML" in one_error_line(capsys)
    assert train.main([]) == 2
    assert "required: --config" in one_error_line(capsys)
    assert cli.main(["trian"]) == 2
    assert "unknown command" in one_error_line(capsys)


def test_a_checkpoint_of_another_dataset_is_refused(tmp_path, cifar100, capsys):
    path = write_config(tmp_path, cifar100)
    ckpt = engine.save_checkpoint(tmp_path / "c10.pth", models.build_model("resnet_custom", 10, blocks=[1, 1, 1],
                                                                          widths=[4, 4, 4]), "resnet_custom", 10)
    assert evaluate.main(["--config", str(path), "--checkpoint", str(ckpt), "progress=false"]) == 2
    assert "10 classes" in one_error_line(capsys)


@pytest.mark.parametrize("command", [["fastcifar", "train"], ["fastcifar.train"]])
def test_the_process_exits_2_without_a_traceback(tmp_path, cifar100, command):
    path = write_config(tmp_path, cifar100, batch_sise=64)
    proc = subprocess.run([sys.executable, "-m", *command, "--config", str(path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "did you mean 'batch_size'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------- overrides and the config files

def test_overrides_in_three_styles_win_over_the_file():
    overrides = config.parse_overrides(["--max_epochs", "7", "--lr=1e-3", "blocks=[2,2,2]", "--data-dir", "null"])
    assert overrides == {"max_epochs": 7, "lr": "1e-3", "blocks": [2, 2, 2], "data_dir": None}
    resolved = config.load(CIFAR100_YAML, overrides, check_data=False)
    assert resolved["max_epochs"] == 7 and resolved["lr"] == 0.001 and resolved["blocks"] == [2, 2, 2]
    assert resolved["widths"] == [64, 128, 256]  # untouched keys keep the file's value


@pytest.mark.parametrize("name", ["cifar100.yaml", "cifar10.yaml"])
def test_every_key_is_in_each_config_file_with_a_comment(name):
    path = ROOT / "configs" / name
    raw = config.read_file(path)
    assert set(raw) == set(config.KEY)
    lines = path.read_text().splitlines()
    for key in config.KEY:
        line = next(l for l in lines if l.startswith(f"{key}:"))
        assert "#" in line, f"{name}: {key} has no comment"
    assert config.resolve(raw, check_data=False)


def test_cifar100_config_is_the_reports_final_setting():
    c = config.load(CIFAR100_YAML, check_data=False)
    assert (c["dataset"], c["blocks"], c["widths"], c["lr"], c["weight_decay"], c["batch_size"], c["max_epochs"],
            c["seed"]) == ("cifar100", [3, 3, 3], [64, 128, 256], 0.002, 1e-4, 128, 20, 42)
    count = models.count_params(commands.build_model(c))
    # the count the config file and README state is the model's own
    assert f"has {count:,} parameters" in CIFAR100_YAML.read_text()
    assert f"counts {count:,} parameters" in (ROOT / "README.md").read_text()


def test_resolved_config_round_trips_through_yaml():
    c = config.load(CIFAR100_YAML, {"train_limit": 10, "grid_lr": [1e-5, 0.3]}, check_data=False)
    assert config.resolve(yaml.safe_load(config.to_yaml(c, "header")), check_data=False) == c


def test_tensorboard_missing_is_said_once_and_the_csv_log_kept(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    monkeypatch.setattr(engine, "_TENSORBOARD_MISSING_SAID", False)
    assert engine.tensorboard_writer(tmp_path) is None and engine.tensorboard_writer(tmp_path) is None
    assert capsys.readouterr().out.count("tensorboard is not installed") == 1
    assert engine.tensorboard_writer(None) is None


def test_tensorboard_events_are_written_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    writer = engine.tensorboard_writer(tmp_path)
    writer.add_scalar("train/loss", 1.0, 1)
    writer.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_the_committed_evidence_names_checkpoints_relative_to_its_run_folders():
    evidence = ROOT / "outputs" / "toolkit" / "cifar10"
    (metrics,) = evidence.glob("evaluate-*/metrics.json")
    pointed = Path(os.path.normpath(metrics.parent / json.loads(metrics.read_text())["checkpoint"]))
    assert pointed.parent.parent == evidence and pointed.name == "model_best.pth"  # a train run beside it
    for summary in evidence.glob("train-*/summary.json"):
        assert json.loads(summary.read_text())["best_checkpoint"] == "model_best.pth"

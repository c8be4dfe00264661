"""What the config-driven commands do with a stopped run, a diverging one, and mistakes found late:
resuming, signals, run folders left behind, warnings. On a generated CIFAR-100 (400 training images)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import make_cifar, signal_when_ready
from fastcifar.core import engine, models
from fastcifar.toolkit import config, evaluate, grid_search, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
CIFAR100_YAML = ROOT / "configs" / "cifar100.yaml"
TINY = ["val_size=100", "blocks=[1,1,1]", "widths=[4,8,16]", "batch_size=64", "device=cpu", "progress=false",
        "sanity_checks=false", "tensorboard=false"]


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("data"), "cifar100", per_file=400)


def base_args(cifar100, out: Path, *extra) -> list[str]:
    return ["--config", str(CIFAR100_YAML), f"data_dir={cifar100.base}", f"output_dir={out}", *TINY, *extra]


def run_folders(out: Path, command: str) -> list[Path]:
    return sorted((out / "cifar100").glob(f"{command}-*")) if (out / "cifar100").is_dir() else []


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def command(*argv: str, env_extra: dict | None = None, **popen) -> subprocess.Popen:
    lib = str(ROOT / "lib")
    env = {**os.environ, "PYTHONPATH": lib, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, **popen)


# ---------------------------------------------------------------- stopped runs and --resume

@pytest.mark.parametrize("signum,code,said", [(signal.SIGTERM, 143, "stopped by signal SIGTERM"),
                                              (signal.SIGINT, 130, "interrupted")])
def test_a_stopped_train_says_so_in_one_line_and_resumes_where_it_stopped(tmp_path, cifar100, signum, code, said):
    out = tmp_path / "out"
    proc = command("fastcifar.train", *base_args(cifar100, out, "max_epochs=400", "checkpoint_every=1"))
    err = signal_when_ready(proc, lambda: run_folders(out, "train") and
                            (run_folders(out, "train")[0] / "model_last.pth").is_file(), signum, wait_s=120)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert f"train: {said}; what was finished is in" in last and "--resume" in last
    assert "Traceback" not in err
    (folder,) = run_folders(out, "train")
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "interrupted" and not list(folder.rglob(".*.tmp*"))
    stopped_at = torch.load(folder / "model_last.pth", weights_only=True)["epoch"]
    assert 1 <= stopped_at < 400

    # go on in the same folder for one more epoch (max_epochs may change, down to the epochs already run)
    assert train.main(["--resume", str(folder), f"max_epochs={stopped_at + 1}"]) == 0
    log = pd.read_csv(folder / "model_log.csv")
    assert list(log.epoch) == list(range(1, stopped_at + 2))  # the stopped epochs kept, one more trained
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "finished" and len(record["resumed"]) == 1 and record["error"] is None
    assert config.read_file(folder / "config.yaml")["max_epochs"] == stopped_at + 1
    assert run_folders(out, "train") == [folder]  # no new folder


def test_resume_refuses_a_folder_without_a_checkpoint_or_with_other_settings(tmp_path, cifar100, capsys):
    out = tmp_path / "out"
    assert train.main(base_args(cifar100, out, "max_epochs=1")) == 0
    (folder,) = run_folders(out, "train")
    assert train.main(["--resume", str(tmp_path)]) == 2
    assert "no run.json and model_last.pth" in error_line(capsys)
    record = (folder / "run.json").read_text()
    assert train.main(["--resume", str(folder), "lr=0.5"]) == 2
    assert "was made with other settings (lr: 0.002 -> 0.5)" in error_line(capsys)
    assert (folder / "run.json").read_text() == record  # refused before its record was touched
    assert config.read_file(folder / "config.yaml")["lr"] == 0.002 and (folder / "model_best.pth").is_file()
    assert train.main([]) == 2
    assert "--config (or --resume RUN_FOLDER)" in error_line(capsys)


# ---------------------------------------------------------------- mistakes found after the run folder was made

def test_a_mistake_found_before_any_output_leaves_no_run_folder(tmp_path, cifar100, capsys):
    out = tmp_path / "out"
    ckpt = engine.save_checkpoint(tmp_path / "c10.pth", models.build_model("resnet_custom", 10, blocks=[1, 1, 1],
                                                                          widths=[4, 4, 4]), "resnet_custom", 10)
    assert evaluate.main([*base_args(cifar100, out), "--checkpoint", str(ckpt)]) == 2
    assert "10 classes" in error_line(capsys)
    assert train.main(base_args(cifar100, out, "val_size=60000")) == 2
    assert "val_size must be below" in error_line(capsys)
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(ckpt.read_bytes()[:100])
    assert evaluate.main([*base_args(cifar100, out), "--checkpoint", str(damaged)]) == 2
    said = error_line(capsys)
    assert "damaged or not a checkpoint" in said and "delete" not in said
    assert not run_folders(out, "evaluate") and not run_folders(out, "train")


def test_a_diverging_training_stops_with_what_to_change(tmp_path, cifar100, capsys):
    out = tmp_path / "out"
    assert train.main(base_args(cifar100, out, "optimizer=sgd", "lr=1.0e+12", "max_epochs=3")) == 2
    said = error_line(capsys)
    assert "training diverged in epoch" in said and "lower lr" in said
    assert not run_folders(out, "train")  # it diverged in its first epoch: nothing was written yet
    assert train.main(base_args(cifar100, out, "optimizer=sgd", "lr=1.0e+12", "max_epochs=3", "sanity_checks=true",
                                "overfit_images=8", "overfit_steps=2")) == 2
    assert "training diverged in epoch" in error_line(capsys)
    (folder,) = run_folders(out, "train")  # the sanity checks had written their results: kept, marked failed
    assert json.loads((folder / "run.json").read_text())["status"] == "failed" and (folder / "sanity.json").is_file()


def test_grid_search_refuses_blocks_and_widths_that_the_model_ignores(tmp_path, cifar100, capsys):
    out = tmp_path / "out"
    assert grid_search.main(base_args(cifar100, out, "model=fastnet", "grid_blocks=[[1,1,1],[2,2,2]]")) == 2
    assert "vary resnet_custom only, and model is fastnet" in error_line(capsys)
    assert not run_folders(out, "grid_search")
    grid_search.check_grid({"model": "fastnet", "grid_blocks": [[1, 1, 1]], "grid_widths": [[4, 8, 16]]})  # fine


# ---------------------------------------------------------------- config files

def test_an_empty_config_file_and_a_key_given_twice_are_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# only a comment\n")
    with pytest.raises(config.ConfigError, match="empty"):
        config.read_file(empty)
    twice = tmp_path / "twice.yaml"
    twice.write_text("lr: 0.1\nseed: 1\nlr: 0.2\n")
    with pytest.raises(config.ConfigError, match=r"'lr' given twice \(lines 1 and 3\)"):
        config.read_file(twice)


def test_a_command_line_mistake_is_blamed_on_the_command_line(tmp_path):
    raw = config.read_file(CIFAR100_YAML)
    with pytest.raises(config.ConfigError, match=r"^command line: data_dir: no folder"):
        config.resolve(raw, {"data_dir": str(tmp_path / "nowhere")})
    with pytest.raises(config.ConfigError, match=r"^command line: lr_finder_min"):
        config.resolve(raw, {"lr_finder_min": 2.0}, check_data=False)
    with pytest.raises(config.ConfigError, match=r"^the file: lr_finder_min"):
        config.resolve({**raw, "lr_finder_min": 2.0}, {}, "the file", check_data=False)


def test_output_dir_null_follows_the_outputs_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCIFAR_OUTPUTS", str(tmp_path / "elsewhere"))
    resolved = config.resolve(config.read_file(CIFAR100_YAML), check_data=False)
    assert resolved["output_dir"] == str(tmp_path / "elsewhere" / "toolkit")
    assert config.resolve({"output_dir": "mine"}, check_data=False)["output_dir"] == "mine"


# ---------------------------------------------------------------- CPU training and evaluation

def test_odd_batches_train_on_the_cpu_in_the_standard_layout(tmp_path, cifar100):
    cfg = engine.TrainConfig(channels_last=True)
    assert not engine.uses_channels_last(cfg, "cpu") and not engine.uses_channels_last(
        engine.TrainConfig(channels_last=False), "cuda")
    assert engine.uses_channels_last(cfg, "cuda")
    # some torch builds abort in backward() on odd channels_last batches on the CPU: run it in its own process
    proc = command("fastcifar.train", *base_args(cifar100, tmp_path / "out", "max_epochs=1", "batch_size=5",
                                                 "train_limit=15", "channels_last=true"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]


def test_evaluating_on_another_validation_split_warns():
    ckpt = {"config": {"seed": 42}, "train_images": 45000}
    assert evaluate.split_differences(ckpt, {"seed": 42}, 45000) == []
    assert evaluate.split_differences({}, {"seed": 7}, 100) == []  # nothing recorded: nothing to say
    lines = evaluate.split_differences(ckpt, {"seed": 7}, 44000)
    assert "seed 42" in lines[0] and "44000" in lines[1] and "may hold images the model was trained on" in lines[2]

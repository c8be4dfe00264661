"""What the config-driven commands do with a stopped run, a diverging one, and mistakes found late:
resuming, signals, run folders left behind, warnings. On a generated CIFAR-100 (400 training images)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import make_cifar, sigint_default, signal_when_ready
from fastcifar.core import engine, models
from fastcifar.toolkit import config, evaluate, grid_search, lr_finder, rundir, train

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
    proc = command("fastcifar.train", *base_args(cifar100, out, "max_epochs=400", "checkpoint_every=1"),
                   preexec_fn=sigint_default)
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
    assert resolved["output_dir"] == str(tmp_path / "elsewhere" / "runs")
    assert config.resolve({"output_dir": "mine"}, check_data=False)["output_dir"] == "mine"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and the clone")
def test_users_runs_go_to_a_git_ignored_folder_and_the_evidence_stays_tracked(monkeypatch):
    monkeypatch.delenv("FASTCIFAR_OUTPUTS", raising=False)
    default = Path(config.resolve({}, check_data=False)["output_dir"])
    assert default == ROOT / "outputs" / "runs"
    run_file = default / "cifar10" / "train-20260101-000000" / "run.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(run_file.relative_to(ROOT))], cwd=ROOT)
    assert ignored.returncode == 0, "outputs/runs/ must be git-ignored"
    for left in ("outputs/.pipeline.lock", "outputs/smoke/.pipeline.lock",
                 "outputs/toolkit/cifar10/train-20260101-000000/.lock"):  # what a run killed outright leaves
        assert subprocess.run(["git", "check-ignore", "-q", left], cwd=ROOT).returncode == 0, left
    evidence = next((ROOT / "outputs" / "toolkit" / "cifar10").glob("evaluate-*/metrics.json"))
    kept = subprocess.run(["git", "check-ignore", "-q", str(evidence.relative_to(ROOT))], cwd=ROOT)
    assert kept.returncode == 1  # the committed evidence is not ignored


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


# ---------------------------------------------------------------- two runs at once, killed runs, a stop at the start

def wait_for_last_checkpoint(proc, out: Path) -> Path:
    def saved():
        return run_folders(out, "train") and (run_folders(out, "train")[0] / "model_last.pth").is_file()

    deadline = time.monotonic() + 120
    while not saved():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return run_folders(out, "train")[0]


def test_a_second_resume_of_a_running_train_is_refused(tmp_path, cifar100, capsys):
    out = tmp_path / "out"
    first = command("fastcifar.train", *base_args(cifar100, out, "max_epochs=400", "checkpoint_every=1"))
    try:
        folder = wait_for_last_checkpoint(first, out)
        record, settings = (folder / "run.json").read_text(), (folder / "config.yaml").read_text()
        assert train.main(["--resume", str(folder)]) == 2
        said = error_line(capsys)
        assert f"in use by another run: pid {first.pid} (python -m fastcifar.train --config" in said
        assert (folder / "run.json").read_text() == record and (folder / "config.yaml").read_text() == settings
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, err
    assert not (folder / ".lock").exists()  # the first run gave its folder back when it stopped
    stopped_at = torch.load(folder / "model_last.pth", weights_only=True)["epoch"]
    assert train.main(["--resume", str(folder), f"max_epochs={stopped_at + 1}"]) == 0


def test_resume_after_a_kill_says_the_last_run_died_and_removes_what_it_left(tmp_path, cifar100, capsys):
    out = tmp_path / "out"
    proc = command("fastcifar.train", *base_args(cifar100, out, "max_epochs=400", "checkpoint_every=1"))
    try:
        folder = wait_for_last_checkpoint(proc, out)
    finally:
        proc.kill()  # SIGKILL: nothing of the run's own cleanup runs
        proc.communicate()
    assert json.loads((folder / "run.json").read_text())["status"] == "running" and (folder / ".lock").is_file()
    half = folder / ".model_last.pth.abcd1234.tmp.pth"  # a checkpoint being written when the kill came
    half.write_bytes(b"half")
    stopped_at = torch.load(folder / "model_last.pth", weights_only=True)["epoch"]
    assert train.main(["--resume", str(folder), f"max_epochs={stopped_at + 1}"]) == 0
    said = capsys.readouterr().out
    assert f"the last run in this folder (pid {proc.pid}" in said and "ended without a word" in said
    # the one planted here, and any the kill itself cut short (the run writes a file or two every epoch)
    assert "temporary file(s) it left: " in said and ".model_last.pth.abcd1234.tmp.pth" in said
    assert not list(folder.rglob(".*.tmp*")) and not (folder / ".lock").exists()
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "finished" and record["resumed"][-1]["previous_status"] == "killed"


def test_a_stop_while_the_run_folder_is_made_leaves_nothing(tmp_path, cifar100, capsys, monkeypatch):
    out = tmp_path / "out"

    def stopped(self, **entries):  # Ctrl-C right after config.yaml was written
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir.RunDir, "update", stopped)
    assert train.main(base_args(cifar100, out, "max_epochs=1")) == 130
    assert "train: interrupted; nothing was written" in capsys.readouterr().err
    assert not run_folders(out, "train")


def test_resume_with_another_architecture_or_data_is_one_line_and_touches_nothing(tmp_path, cifar100, capsys):
    out = tmp_path / "out"
    assert train.main(base_args(cifar100, out, "max_epochs=1")) == 0
    (folder,) = run_folders(out, "train")
    before = {name: (folder / name).read_text() for name in ("run.json", "config.yaml", "model_log.csv")}
    assert train.main(["--resume", str(folder), "widths=[8,16,32]", "max_epochs=2"]) == 2
    said = error_line(capsys)
    assert "was made with other settings (widths: [4, 8, 16] -> [8, 16, 32])" in said
    assert {name: (folder / name).read_text() for name in before} == before
    for change, named in (("val_size=120", "val_size: 100 -> 120"), ("model=fastnet", "model: 'resnet_custom'")):
        assert train.main(["--resume", str(folder), change]) == 2
        assert named in error_line(capsys)
    # other pixels of the same size: found once the data is read, and the folder is put back as it was
    other = make_cifar(tmp_path / "other", "cifar100", per_file=400, seed=1)
    assert train.main(["--resume", str(folder), f"data_dir={other.base}", "max_epochs=2"]) == 2
    assert "data_source" in error_line(capsys)
    assert {name: (folder / name).read_text() for name in before} == before
    assert train.main(["--resume", str(folder), "max_epochs=2"]) == 0  # a plain resume still works
    assert list(pd.read_csv(folder / "model_log.csv").epoch) == [1, 2]


# ---------------------------------------------------------------- mistakes found at the start

@pytest.mark.parametrize("command_main", [train.main, lr_finder.main, grid_search.main])
def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, cifar100, capsys, command_main):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert command_main(base_args(cifar100, a_file / "x")) == 2
    said = error_line(capsys)
    assert said.startswith("error: output_dir: cannot write to") and str(a_file / "x") in said


def test_a_seed_beyond_numpys_range_is_refused_before_any_work(tmp_path, cifar100, capsys):
    out = tmp_path / "out"
    assert train.main(base_args(cifar100, out, "seed=4294967296")) == 2
    assert "seed must be an integer <= 4294967295, got 4294967296" in error_line(capsys)
    assert not out.exists()
    assert config.resolve({"seed": 2**32 - 1}, check_data=False)["seed"] == 2**32 - 1


def test_weights_that_do_not_fit_and_damaged_files_are_one_line_without_unsafe_advice(tmp_path, cifar100, capsys):
    import io

    out = tmp_path / "out"
    model = models.build_model("resnet_custom", 100, blocks=[1, 1, 1], widths=[4, 8, 16])
    ckpt = torch.load(engine.save_checkpoint(tmp_path / "m.pth", model, "resnet_custom", 100), weights_only=True)
    ckpt["arch"] = {"blocks": [1, 1, 1], "widths": [8, 16, 32]}  # an arch entry its weights do not match
    torch.save(ckpt, tmp_path / "mismatch.pth")
    assert evaluate.main([*base_args(cifar100, out), "--checkpoint", str(tmp_path / "mismatch.pth")]) == 2
    said = error_line(capsys)
    assert "weights do not fit a 'resnet_custom'" in said and "tensors differ (first: stem.0.weight: [4, 3, 3, 3] in " \
        "the checkpoint, [8, 3, 3, 3] in the model)" in said
    torch.save({"format": engine.CHECKPOINT_FORMAT, "state_dict": io.StringIO("code")}, tmp_path / "object.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "mismatch.pth").read_bytes()[:200])
    for name, expected in (("object.pth", "holds a Python object (_io.StringIO)"), ("cut.pth", "damaged")):
        assert evaluate.main([*base_args(cifar100, out), "--checkpoint", str(tmp_path / name)]) == 2
        said = error_line(capsys)
        assert expected in said and "weights_only" not in said and "trust" not in said
    assert not run_folders(out, "evaluate")


# ---------------------------------------------------------------- what a newcomer sees

def test_a_cpu_run_says_so_up_front_with_an_epochs_time_then_each_sanity_check(tmp_path, cifar100, capsys):
    out = tmp_path / "out"
    assert train.main(base_args(cifar100, out, "max_epochs=1", "sanity_checks=true", "overfit_images=8",
                                "overfit_steps=2")) == 0
    lines = capsys.readouterr().out.splitlines()
    cpu = next(i for i, line in enumerate(lines) if "training on the CPU" in line)
    assert "an epoch of 300 images takes about" in lines[cpu] and "1 epoch about" in lines[cpu]
    checks = [i for i, line in enumerate(lines) if line.startswith("sanity: ")]
    assert cpu < checks[0] and [lines[i].split()[1] for i in checks[1:4]] == ["baselines", "initial", "overfit"]
    assert sum("training on the CPU" in line for line in lines) == 1  # said once


def test_a_missing_cifar100_says_how_to_get_it(tmp_path):
    with pytest.raises(config.ConfigError, match=r"get it with `python -m fastcifar\.data --download cifar100`"):
        config.load(CIFAR100_YAML, {"data_dir": str(tmp_path)})

"""The four commands on the real CIFAR-10 copy (data/cifar-10-batches-py), smoke size: a few hundred
images, one epoch, tiny widths. Skipped where the copy is absent."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from fastcifar import cli
from fastcifar.core import data, env

ROOT = Path(__file__).resolve().parents[1]
CIFAR10_YAML = ROOT / "configs" / "cifar10.yaml"
SMOKE = ["train_limit=256", "eval_limit=200", "blocks=[1,1,1]", "widths=[8,16,32]", "batch_size=64", "max_epochs=1",
         "overfit_images=16", "overfit_steps=3", "lr_finder_steps=10", "grid_epochs=1", "grid_lr=[0.002]",
         "grid_weight_decay=[1.0e-4]", "grid_blocks=[[1,1,1],[1,1,2]]", "grid_widths=[[8,16,32]]", "device=cpu",
         "progress=false"]


def cifar10_dir() -> Path | None:
    try:
        folder = env.data_dir() / "cifar-10-batches-py"
    except FileNotFoundError:
        return None
    return folder if (folder / "test_batch").is_file() else None


pytestmark = [pytest.mark.skipif(cifar10_dir() is None, reason="no CIFAR-10 copy under the data folder"),
              pytest.mark.usefixtures("one_torch_thread")]


def newest(outputs: Path, command: str) -> Path:
    found = sorted((outputs / "cifar10").glob(f"{command}-*"))
    assert len(found) == 1, found
    return found[0]


def test_all_four_commands_on_the_cifar10_copy(tmp_path):
    common = ["--config", str(CIFAR10_YAML), f"output_dir={tmp_path}", *SMOKE]
    assert cli.main(["train", *common]) == 0
    trained = newest(tmp_path, "train")
    record = json.loads((trained / "run.json").read_text())
    assert record["data"]["source"] == data.load_cifar("cifar10").source  # the copy's provenance and fingerprint
    assert (record["data"]["train_images"], record["data"]["val_images"], record["data"]["test_images"]) == (256, 200, 200)
    assert len(pd.read_csv(trained / "model_log.csv")) == 1

    assert cli.main(["evaluate", *common, "--checkpoint", str(trained / "model_best.pth")]) == 0
    metrics = json.loads((newest(tmp_path, "evaluate") / "metrics.json").read_text())
    assert metrics["images"] == 200 and metrics["top1"] <= metrics["top5"] and "superclass_top1" not in metrics
    assert len(pd.read_csv(newest(tmp_path, "evaluate") / "per_class.csv")) == 10

    assert cli.main(["lr_finder", *common]) == 0
    assert len(pd.read_csv(newest(tmp_path, "lr_finder") / "lr_finder.csv")) >= 5

    assert cli.main(["grid_search", *common]) == 0
    assert len(pd.read_csv(newest(tmp_path, "grid_search") / "grid_results.csv")) == 2


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="needs bash and tar")
def test_gpu_script_runs_the_workflow_and_packs_one_archive_without_weights(tmp_path, cifar_factory):
    # The script's own config (cifar10.yaml) on a small generated CIFAR-10, tiny model, on the CPU.
    generated = cifar_factory("cifar10", per_file=40)
    out = tmp_path / "out"
    env_vars = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "FASTCIFAR_COMMIT": "test",
                "TOOLKIT_WORK": str(tmp_path / "work")}
    overrides = [f"data_dir={generated.base}", "val_size=50", *SMOKE]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "toolkit_cifar10_gpu.sh"), str(out), *overrides],
                          capture_output=True, text=True, env=env_vars, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["toolkit_cifar10.tar.gz"]  # one file comes back from the GPU machine
    assert list((tmp_path / "work" / "toolkit" / "cifar10").glob("train-*/model_best.pth"))  # weights stay there
    with tarfile.open(out / "toolkit_cifar10.tar.gz") as archive:
        names = archive.getnames()
    assert not [n for n in names if n.endswith(".pth")]
    for command, output in (("train", "model_log.csv"), ("lr_finder", "lr_finder.png"),
                            ("grid_search", "grid_results.md"), ("evaluate", "confusion_matrix.png")):
        assert [n for n in names if f"/{command}-" in n and n.endswith(output)], command
    assert "toolkit/logs/timings.txt" in names and "toolkit/logs/train.log" in names
    evaluated = [n for n in names if n.endswith("metrics.json")]
    assert len(evaluated) == 1
    runs = tmp_path / "work" / "toolkit" / "cifar10"
    grid_best = json.loads(next(runs.glob("grid_search-*/run.json")).read_text())["result"]["best"]
    trained = json.loads(next(runs.glob("train-*/run.json")).read_text())["config"]
    assert (trained["lr"], trained["blocks"], trained["widths"]) == (grid_best["lr"], grid_best["blocks"],
                                                                    grid_best["widths"])  # trained the grid's choice

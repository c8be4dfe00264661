"""Shared fixtures: small generated CIFAR datasets in the official python layouts, isolated folders.

Nothing here downloads anything or needs a GPU. The generated datasets are tiny (tens of images per
batch file) with labels cycling over every class, so a stratified split has every class to draw from.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # plots in tests never open a window

import numpy as np
import pytest

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class GeneratedCifar:
    """What was written, so tests can compare what load_cifar reads with what went in."""

    name: str
    base: Path  # the data dir (what load_cifar's data_dir points at)
    folder: Path  # base / layout folder
    files: dict  # file name -> the dict written (str keys, before any bytes conversion)
    train_data: np.ndarray  # (N, 3072) uint8 rows, concatenated in file order
    train_labels: np.ndarray
    test_data: np.ndarray
    test_labels: np.ndarray
    classes: list
    keys: str  # "str" or "bytes"


def write_pickle(path: Path, entry: dict, keys: str = "str") -> Path:
    """Write `entry` as the official files do: str keys with protocol 4 (rebuilt files), or bytes keys
    with protocol 2 (what the official Python 2 pickles look like from Python 3)."""
    if keys == "bytes":
        def enc(v):
            if isinstance(v, str):
                return v.encode()
            if isinstance(v, list) and v and isinstance(v[0], str):
                return [s.encode() for s in v]
            return v

        entry, protocol = {k.encode(): enc(v) for k, v in entry.items()}, 2
    elif keys == "str":
        protocol = 4
    else:
        raise ValueError(keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=protocol)
    return path


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def make_cifar(base: Path, name: str = "cifar10", keys: str = "str", per_file: int | None = None,
               seed: int = 0) -> GeneratedCifar:
    """Write a small generated dataset under `base` in the official layout of `name`."""
    rng = np.random.default_rng(seed)
    base = Path(base)
    files: dict[str, dict] = {}
    if name == "cifar10":
        per_file = per_file or 20
        folder = base / "cifar-10-batches-py"
        train_names = [f"data_batch_{i}" for i in range(1, 6)]
        start = 0
        for fname in [*train_names, "test_batch"]:
            labels = [(start + j) % 10 for j in range(per_file)]
            start += per_file
            files[fname] = {"batch_label": f"generated {fname}", "labels": labels, "data": _images(rng, per_file),
                            "filenames": [f"{fname}_{j}.png" for j in range(per_file)]}
        files["batches.meta"] = {"label_names": list(CIFAR10_NAMES), "num_cases_per_batch": per_file,
                                 "num_vis": 3072}
        classes, label_key, test_names = list(CIFAR10_NAMES), "labels", ["test_batch"]
    elif name == "cifar100":
        per_file = per_file or 200  # twice over the 100 fine classes
        folder = base / "cifar-100-python"
        train_names, test_names = ["train"], ["test"]
        classes = [f"fine{i:02d}" for i in range(100)]
        for fname, n in (("train", per_file), ("test", per_file // 2)):
            fine = [j % 100 for j in range(n)]
            files[fname] = {"batch_label": f"generated {fname}", "fine_labels": fine,
                            "coarse_labels": [f // 5 for f in fine], "data": _images(rng, n),
                            "filenames": [f"{fname}_{j}.png" for j in range(n)]}
        files["meta"] = {"fine_label_names": list(classes), "coarse_label_names": [f"coarse{i}" for i in range(20)]}
        label_key = "fine_labels"
    else:
        raise ValueError(name)
    for fname, entry in files.items():
        write_pickle(folder / fname, entry, keys)

    def cat(names, key):
        return np.concatenate([np.asarray(files[f][key]) for f in names])

    return GeneratedCifar(name, base, folder, files, cat(train_names, "data"),
                          cat(train_names, label_key).astype(np.int64), cat(test_names, "data"),
                          cat(test_names, label_key).astype(np.int64), classes, keys)


@pytest.fixture
def cifar_factory(tmp_path):
    """make(name="cifar10", keys="str", per_file=None, seed=0, base=None) -> GeneratedCifar."""
    counter = iter(range(1_000_000))

    def make(name: str = "cifar10", keys: str = "str", per_file: int | None = None, seed: int = 0,
             base: Path | None = None) -> GeneratedCifar:
        return make_cifar(base or tmp_path / f"data{next(counter)}", name, keys, per_file, seed)

    return make


@pytest.fixture
def pickle_writer():
    """write(path, entry, keys="str"): the writer used for the generated files, for damaged variants."""
    return write_pickle


@pytest.fixture
def cifar10_str(cifar_factory):
    return cifar_factory("cifar10", "str")


@pytest.fixture
def cifar10_bytes(cifar_factory):
    return cifar_factory("cifar10", "bytes")


@pytest.fixture
def cifar100_str(cifar_factory):
    return cifar_factory("cifar100", "str")


@pytest.fixture
def cifar100_bytes(cifar_factory):
    return cifar_factory("cifar100", "bytes")


@pytest.fixture(params=["str", "bytes"])
def cifar10_any(request, cifar_factory):
    """The generated CIFAR-10, once with str keys and once with bytes keys."""
    return cifar_factory("cifar10", request.param)


@pytest.fixture(params=["str", "bytes"])
def cifar100_any(request, cifar_factory):
    """The generated CIFAR-100, once with str keys and once with bytes keys."""
    return cifar_factory("cifar100", request.param)


@pytest.fixture
def isolated_dirs(tmp_path, monkeypatch):
    """FASTCIFAR_DATA and FASTCIFAR_OUTPUTS pointed at fresh temporary folders (returned as a dict)."""
    from fastcifar.core import env

    data, outputs = tmp_path / "env-data", tmp_path / "env-outputs"
    data.mkdir()
    outputs.mkdir()
    monkeypatch.setenv(env.DATA_ENV, str(data))
    monkeypatch.setenv(env.OUTPUTS_ENV, str(outputs))
    return {"data": data, "outputs": outputs}


# ---------------------------------------------------------------- GPU test report (make test-gpu)

def pytest_addoption(parser):
    parser.addoption("--gpu-report", metavar="PATH", default=None,
                     help="write a JSON report (device, torch, commit, counts) of this run to PATH")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    path = config.getoption("--gpu-report")
    if not path:
        return
    import datetime
    import json

    import torch

    from fastcifar.core import atomic, env

    stats = terminalreporter.stats
    counts = {kind: len([r for r in stats.get(kind, []) if getattr(r, "when", "call") in ("call", "setup")])
              for kind in ("passed", "failed", "skipped", "error", "xfailed", "xpassed")}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    junit = config.getoption("--junitxml", default=None)
    report = {
        "device": env.device_name(device), "torch": str(torch.__version__), "cuda": torch.version.cuda or "none",
        "git_commit": env.git_commit(), "python": env.versions()["python"],
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "marker": config.getoption("-m") or "", "exit_status": int(exitstatus), **counts,
        "failed_tests": [r.nodeid for r in stats.get("failed", []) + stats.get("error", [])],
        "junit_xml": os.path.basename(junit) if junit else None,
    }
    atomic.write_text(path, json.dumps(report, indent=2) + "\n")
    terminalreporter.write_line(f"GPU test report: {path}")


@pytest.fixture
def one_torch_thread():
    """Torch on one thread: for tiny models a second thread costs more than it saves."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sigint_default():
    """preexec_fn for a child that a test stops with SIGINT: a shell starts background jobs with SIGINT
    ignored and the child would inherit that (Python then raises no KeyboardInterrupt), so the test would
    depend on how the suite was launched. Ctrl-C at a terminal reaches the command with SIGINT default."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_when_ready(proc, ready, signum, wait_s: float = 60, check=None) -> str:
    """Wait until `ready()` holds while `proc` still runs, call `check()` if given, send `signum` and
    return what the process wrote to stderr; a process that outlives this is killed."""
    import time

    try:
        deadline = time.monotonic() + wait_s
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        if check is not None:
            check()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err


# ---------------------------------------------------------------- the kernels' tests (test_kernels, test_grid_kernel)

def model_logits(model, x, mirror):
    """FP32 logits of the model (true FP32 on CUDA: TF32 convolutions off), mirror averaged."""
    import torch

    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            out = model(x)
            return (out + model(x.flip(3))) / 2 if mirror else out
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def relative_error(got, want):
    """max |got - want| over max |want|, as a float."""
    return ((got - want).abs().max() / want.abs().max()).item()

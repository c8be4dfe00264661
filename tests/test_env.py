"""fastcifar.core.env (root, folders, profiles, commit) and fastcifar.core.atomic."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastcifar.core import atomic, env

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_env(monkeypatch):
    for name in (env.ROOT_ENV, env.DATA_ENV, env.OUTPUTS_ENV, env.COMMIT_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_project(tmp_path):
    root = tmp_path / "proj"
    (root / "lib" / "fastcifar").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "notebooks" / "deep").mkdir(parents=True)
    return root


def test_project_root_from_notebooks_folder(no_env, monkeypatch):
    assert (REPO / "pyproject.toml").is_file()
    assert env.project_root(REPO / "notebooks") == REPO
    monkeypatch.chdir(REPO / "notebooks")
    assert env.project_root() == REPO


def test_project_root_walks_up_from_start(no_env, fake_project):
    assert env.project_root(fake_project / "notebooks" / "deep") == fake_project.resolve()
    assert env.project_root(fake_project) == fake_project.resolve()


def test_project_root_needs_lib_fastcifar(no_env, tmp_path):
    # a pyproject.toml alone (some other project) is not the root: fall back to where the package lives
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "pyproject.toml").write_text("")
    try:
        root = env.project_root(other / "sub")
    except FileNotFoundError:  # the package itself lives outside any project
        return
    assert root != other.resolve()


def test_project_root_not_found(no_env, tmp_path, monkeypatch):
    monkeypatch.setattr(env, "__file__", str(tmp_path / "site" / "fastcifar" / "core" / "env.py"))
    with pytest.raises(FileNotFoundError, match="FASTCIFAR_ROOT"):
        env.project_root(tmp_path)


def test_project_root_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(env.ROOT_ENV, str(tmp_path))
    assert env.project_root() == tmp_path.resolve()
    assert env.project_root(REPO / "notebooks") == tmp_path.resolve()


def test_data_dir_precedence(no_env, monkeypatch, tmp_path, fake_project):
    monkeypatch.setenv(env.ROOT_ENV, str(fake_project))
    assert env.data_dir() == fake_project.resolve() / "data"
    monkeypatch.setenv(env.DATA_ENV, str(tmp_path / "from-env"))
    assert env.data_dir() == tmp_path / "from-env"
    assert env.data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert env.data_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"
    monkeypatch.setenv(env.DATA_ENV, "")  # empty means unset
    assert env.data_dir() == fake_project.resolve() / "data"


def test_outputs_dir(no_env, monkeypatch, fake_project, isolated_dirs):
    out = isolated_dirs["outputs"]
    assert env.outputs_dir("full") == out
    assert env.outputs_dir("smoke") == out / "smoke"
    assert env.outputs_dir() == out
    monkeypatch.delenv(env.OUTPUTS_ENV)
    monkeypatch.setenv(env.ROOT_ENV, str(fake_project))
    assert env.outputs_dir("smoke") == fake_project.resolve() / "outputs" / "smoke"
    assert env.outputs_dir("full") == fake_project.resolve() / "outputs"


def test_resolve_profile_full_needs_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="smoke"):
        env.resolve_profile("full")
    assert env.resolve_profile("auto").name == "smoke"
    smoke = env.resolve_profile("smoke")
    assert smoke.is_smoke and smoke is env.PROFILES["smoke"]


def test_resolve_profile_auto_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert env.resolve_profile("auto").name == "full"
    assert env.resolve_profile("full") is env.PROFILES["full"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the real CPU-only machine")
def test_resolve_profile_full_on_this_cpu_machine():
    with pytest.raises(RuntimeError, match="smoke"):
        env.resolve_profile("full")


@pytest.mark.parametrize("name", ["fast", "FULL", ""])
def test_resolve_profile_unknown(name):
    with pytest.raises(ValueError):
        env.resolve_profile(name)


def test_profile_epochs_and_protocol():
    smoke, full = env.PROFILES["smoke"], env.PROFILES["full"]
    assert smoke.epochs(30) == 1 and full.epochs(30) == 30
    assert 50 <= full.warmup_iters <= 200 and 500 <= full.measure_iters <= 2000  # the seed's protocol
    assert not full.is_smoke


def test_git_commit_from_env(monkeypatch):
    monkeypatch.setenv(env.COMMIT_ENV, "abc123def456-dirty")
    assert env.git_commit() == "abc123def456-dirty"


def test_git_commit_without_env_is_a_string(no_env):
    commit = env.git_commit()
    assert isinstance(commit, str) and commit


# ---------------------------------------------------------------- atomic


def test_stop_reason_names_the_signal_and_the_shells_exit_status():
    assert atomic.stop_reason(atomic.Terminated("stopped by signal SIGTERM")) == ("stopped by signal SIGTERM", 143)
    assert atomic.stop_reason(KeyboardInterrupt()) == ("interrupted", 130)


def test_ensure_writable_makes_the_folder_and_leaves_nothing_in_it(tmp_path):
    assert atomic.ensure_writable(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    assert list((tmp_path / "new" / "out").iterdir()) == []
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError):
        atomic.ensure_writable(tmp_path / "a_file")


def test_atomic_write_text_and_bytes(tmp_path):
    path = atomic.write_text(tmp_path / "a" / "b.txt", "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    atomic.write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.txt"]


def test_atomic_write_text_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "notes.md"
    path.write_text("old\n")

    def failing_write_text(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[:3])  # half written
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(path, "new content\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.md"]


def test_atomic_path_failure_before_first_write(tmp_path):
    path = tmp_path / "x.csv"
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(path) as tmp:
            assert tmp.parent == tmp_path and tmp != path
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_data_and_outputs_outside_a_project_default_to_the_working_folder(no_env, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(env, "project_root", lambda start=None: (_ for _ in ()).throw(FileNotFoundError("none")))
    assert env.data_dir() == tmp_path / "data"
    assert env.outputs_dir("smoke") == tmp_path / "outputs" / "smoke"
    assert env.git_commit() == "unknown"


def test_a_non_editable_install_loads_models_and_data_outside_the_project(tmp_path):
    """Build and install the package into a temporary folder (not editable), then use it from a folder
    that is not the project: data, models and checkpoints must not need the project folder."""
    import os
    import shutil
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    from conftest import make_cifar

    make_cifar(work / "data", "cifar10")
    script = """
import importlib.metadata as md, pathlib, sys
import fastcifar
from fastcifar.core import data, engine, env, models
assert pathlib.Path(fastcifar.__file__).resolve().is_relative_to(pathlib.Path(sys.argv[1]).resolve()), fastcifar.__file__
assert md.version("fastcifar") == fastcifar.__version__
scripts = {e.name: e.value for e in md.entry_points(group="console_scripts")}
assert scripts.get("fastcifar") == "fastcifar.cli:main", scripts
cifar = data.load_cifar("cifar10")
assert len(cifar.train) == 100 and env.data_dir() == pathlib.Path.cwd() / "data"
model = models.build_model("fastnet", widths=(8, 16, 16))
path = engine.save_checkpoint("m.pt", model, "fastnet", 10)
loaded, ckpt = engine.load_model(path)
assert ckpt["arch"]["widths"] == [8, 16, 16]
print("ok")
"""
    clean_env = {k: v for k, v in os.environ.items()
                 if k not in ("PYTHONPATH", env.ROOT_ENV, env.DATA_ENV, env.OUTPUTS_ENV)}
    res = subprocess.run([sys.executable, "-c", script, str(site)], cwd=work, capture_output=True, text=True,
                         env={**clean_env, "PYTHONPATH": str(site)})
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]

import json
import time

import pandas as pd
import pytest

from fastcifar.core import bench
from fastcifar.series import pipeline


def test_every_notebook_is_found_and_has_a_parameters_cell():
    from fastcifar.series.notebook_params import notebook_parameters

    paths = pipeline.notebook_paths()
    assert list(paths) == pipeline.NOTEBOOKS
    for path in paths.values():
        profile = notebook_parameters(path)["profile"]  # exactly one tagged cell, declaring the profile
        assert profile.default == "auto" and profile.type_name == "str", path.name


def test_unknown_notebook_is_refused():
    with pytest.raises(ValueError, match="unknown notebooks"):
        pipeline.run("smoke", ["J9"])


def test_smoke_run_of_j1(tmp_path, monkeypatch):
    """The pipeline executes J1 headlessly in the smoke profile and writes its evidence."""
    monkeypatch.setenv("FASTCIFAR_OUTPUTS", str(tmp_path))
    timings = pipeline.run("smoke", ["J1"], progress=False)
    assert [t["notebook"] for t in timings] == ["J1"]
    out = tmp_path / "smoke"
    assert (out / "notebooks" / "J1_benchmark.ipynb").is_file()
    rows = bench.read_results(out / "results_j1_validation.csv")
    assert list(rows.id) == ["V1", "V2", "V3"]
    assert (rows.profile == "smoke").all() and rows.device_name.str.startswith("cpu").all()
    assert (pd.to_numeric(rows.lat_p95_ms) > 0).all()
    summary = json.loads((out / "pipeline_J1.json").read_text())
    assert summary["profile"] == "smoke" and summary["notebooks"][0]["notebook"] == "J1"


# ---------------------------------------------------------------- a tiny generated project

import os
import re
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import nbformat

from conftest import sigint_default, signal_when_ready
from fastcifar.core import atomic
from fastcifar.series import notebook_params
from fastcifar.series.notebook_params import ParameterError

PARAMETERS = textwrap.dedent('''\
    profile = "auto"
    epochs: int = 2
    rate = 0.5
    fail = False
    crash = False
    sleep = 0.0
    release = ""
    name = "x"
''')
# Writes a results CSV first, then fails or sleeps when asked: what a real notebook does in between.
BODY = textwrap.dedent('''\
    import os, pathlib, time
    out = pathlib.Path(os.environ["FASTCIFAR_OUTPUTS"]) / "smoke"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.csv").write_text(f"epochs,name\\n{epochs},{name}\\n")
    (out / "started").write_text("yes")
    (pathlib.Path(os.environ["FASTCIFAR_DATA"]) / "kernel.pid").write_text(str(os.getpid()))
    (out / "checkpoints").mkdir(exist_ok=True)  # a checkpoint replaced as save_checkpoint does: a new file
    (out / "checkpoints" / ".model.pth.tmp").write_text(f"weights after {epochs} epochs")
    os.replace(out / "checkpoints" / ".model.pth.tmp", out / "checkpoints" / "model.pth")
    readme = pathlib.Path(os.environ["FASTCIFAR_ROOT"]) / "README.md"
    if readme.exists():  # as J5 rewrites README's final-table block
        head, rest = readme.read_text().split("<!-- final-table:start -->\\n")
        readme.write_text(head + "<!-- final-table:start -->\\n" + f"table of a run with {epochs} epochs\\n"
                          + rest[rest.index("<!-- final-table:end -->"):])
''')
TINY_README = "# tiny\n<!-- final-table:start -->\n{table}<!-- final-table:end -->\n"
FAILS = ('if crash:  # the kernel process dies, as in a segfault, after a word on its own stderr\n'
         '    os.write(2, b"native crash message\\n")\n'
         '    os._exit(1)\n'
         'if fail:\n    raise ValueError("boom in the tiny notebook")\ntime.sleep(sleep)\n'
         'while release and not os.path.exists(release):  # holds the run open until the test says so\n'
         '    time.sleep(0.05)\n')


def tiny_notebook(path: Path, parameters: str = PARAMETERS) -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"},
                                            "language_info": {"name": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(BODY), nbformat.v4.new_code_cell(FAILS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    """A project root holding five tiny notebooks J1..J5 (J2 lacks `rate`), with its own output and data folders."""
    root = tmp_path / "project"
    for nb in pipeline.NOTEBOOKS:
        params = PARAMETERS.replace("rate = 0.5\n", "") if nb == "J2" else PARAMETERS
        tiny_notebook(root / "notebooks" / f"{nb}_tiny.ipynb", params)
    (root / "lib" / "fastcifar").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    env_vars = {"FASTCIFAR_ROOT": str(root), "FASTCIFAR_OUTPUTS": str(tmp_path / "outputs"),
                "FASTCIFAR_DATA": str(tmp_path / "data")}
    for k, v in env_vars.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "data").mkdir()
    return {"root": root, "out": tmp_path / "outputs" / "smoke", "data": tmp_path / "data", "env": env_vars}


def injected(path: Path) -> str:
    nb = nbformat.read(str(path), as_version=4)
    return "".join(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))


def test_success_writes_notebook_with_normal_permissions_and_cleans_stale_files(tiny_project):
    out, data_dir = tiny_project["out"], tiny_project["data"]
    stale_nb = out / "notebooks" / ".J1_tiny.ipynb.ab12cd34.tmp.ipynb"
    stale_nb.parent.mkdir(parents=True)
    stale_nb.write_text("{}")
    (data_dir / ".rebuild-k2j3h4").mkdir()
    (data_dir / ".rebuild-k2j3h4" / "data_batch_1").write_bytes(b"x" * 100)
    keep = out / "notebooks" / "notes.tmp.txt"  # not a name atomic_path makes: left alone
    keep.write_text("mine")
    old_umask = os.umask(0o022)
    try:
        pipeline.run("smoke", ["J1", "J2"], ["epochs=3", "J2.name=b", "rate=0.25"], progress=False)
    finally:
        os.umask(old_umask)
    assert not stale_nb.exists() and not (data_dir / ".rebuild-k2j3h4").exists() and keep.exists()
    j1, j2 = out / "notebooks" / "J1_tiny.ipynb", out / "notebooks" / "J2_tiny.ipynb"
    assert (j1.stat().st_mode & 0o777) == 0o644 and ((out / "pipeline_J1_J2.json").stat().st_mode & 0o777) == 0o644
    assert "epochs = 3" in injected(j1) and "rate = 0.25" in injected(j1) and 'name = "b"' not in injected(j1)
    assert 'name = "b"' in injected(j2) and "rate" not in injected(j2)  # J2 has no rate: global values skip it
    assert 'profile = "smoke"' in injected(j2)
    assert (out / "results.csv").read_text() == "epochs,name\n3,b\n"
    assert not list(out.rglob(".*.tmp*")) and not (out / pipeline.SNAPSHOT_DIR).exists()


def test_a_failing_notebook_is_kept_and_results_are_put_back(tiny_project, capsys):
    out = tiny_project["out"]
    out.mkdir(parents=True)
    (out / "results.csv").write_text("from the last good run\n")
    readme = tiny_project["root"] / "README.md"
    readme.write_text(TINY_README.format(table="no table yet\n"))
    code = pipeline.main(["--profile", "smoke", "--only", "J1", "J2", "-p", "J2.fail=True", "-p", "J2.epochs=7",
                          "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "J2 failed in cell" in err and "ValueError: boom in the tiny notebook" in err and "J2_tiny.failed.ipynb" in err
    failed = out / "notebooks" / "J2_tiny.failed.ipynb"
    assert failed.is_file() and "boom in the tiny notebook" in failed.read_text()
    assert (failed.stat().st_mode & 0o077) != 0  # readable by others, not mkstemp's 0600
    assert not (out / "notebooks" / "J2_tiny.ipynb").exists()
    # J1 succeeded and its results stay; J2's half-written results were put back to J1's
    assert (out / "notebooks" / "J1_tiny.ipynb").is_file()
    assert (out / "results.csv").read_text() == "epochs,name\n2,x\n"
    assert readme.read_text() == TINY_README.format(table="table of a run with 2 epochs\n")  # J1's, not J2's
    assert (out / "checkpoints" / "model.pth").read_text() == "weights after 2 epochs"  # what J4 would load
    assert not list(out.rglob(".*.tmp*")) and not (out / pipeline.SNAPSHOT_DIR).exists()
    assert not (out / "pipeline_J1_J2.json").exists()
    # a later success supersedes the failed copy
    pipeline.run("smoke", ["J2"], progress=False)
    assert not failed.exists() and (out / "notebooks" / "J2_tiny.ipynb").is_file()


@pytest.mark.parametrize("signum,code,said", [(signal.SIGTERM, 143, "stopped by signal SIGTERM"),
                                              (signal.SIGINT, 130, "interrupted")])
def test_a_signal_removes_temporary_files_and_puts_results_back(tiny_project, signum, code, said):
    out = tiny_project["out"]
    out.mkdir(parents=True)
    (out / "results.csv").write_text("from the last good run\n")
    lib = str(Path(pipeline.__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-m", "fastcifar.pipeline", "--profile", "smoke", "--only", "J1",
                             "-p", "sleep=60", "--no-progress"], env={**os.environ, "PYTHONPATH": lib},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)

    def executed_copy_is_being_written():
        assert list((out / "notebooks").glob(".*.tmp.ipynb"))

    # "started": the notebook has written its results and sleeps
    err = signal_when_ready(proc, (out / "started").exists, signum, check=executed_copy_is_being_written)
    assert proc.returncode == code, err
    assert f": {said};" in err.strip().splitlines()[-1]  # the last word is the pipeline's, not the kernel's
    assert "Traceback" not in err and not list((out / "notebooks").glob("*kernel.log"))
    assert not alive(int((tiny_project["data"] / "kernel.pid").read_text()))  # ended before results were put back
    assert not list(out.rglob(".*.tmp*")) and not (out / pipeline.SNAPSHOT_DIR).exists()
    assert (out / "results.csv").read_text() == "from the last good run\n"
    assert not (out / "started").exists()  # created by the interrupted notebook: removed with its results


def test_next_start_undoes_a_run_killed_outright(tiny_project):
    out = tiny_project["out"]
    out.mkdir(parents=True)
    (out / "results.csv").write_text("good\n")
    readme = tiny_project["root"] / "README.md"
    readme.write_text(TINY_README.format(table="table of the last good run\n"))
    pipeline.take_snapshot(out, readme=readme)
    (out / "results.csv").write_text("half of a killed run\n")
    (out / "new.csv").write_text("also\n")
    readme.write_text(TINY_README.format(table="half a table\n") + "a line its reader added meanwhile\n")
    tmp = out / "notebooks" / ".J3_tiny.ipynb.x1y2z3w4.tmp.ipynb"
    tmp.parent.mkdir()
    tmp.write_text("{}")
    done = pipeline.clean_stale(out, tiny_project["data"])
    assert len(done) == 2
    assert (out / "results.csv").read_text() == "good\n" and not (out / "new.csv").exists() and not tmp.exists()
    assert readme.read_text() == TINY_README.format(table="table of the last good run\n") + \
        "a line its reader added meanwhile\n"  # the block put back, the rest of README left as it is
    pipeline.take_snapshot(out, readme=tiny_project["root"] / "absent.md")  # no README: nothing to put back
    assert pipeline.restore_snapshot(out)


def test_a_snapshot_left_by_an_older_version_is_still_put_back(tiny_project):
    out = tiny_project["out"]
    snap = out / pipeline.SNAPSHOT_DIR
    snap.mkdir(parents=True)
    (snap / "00000").write_text("good\n")
    (snap / "manifest.json").write_text('["results.csv"]')  # a plain list of results files
    (out / "results.csv").write_text("half\n")
    assert pipeline.restore_snapshot(out) and (out / "results.csv").read_text() == "good\n"


@pytest.mark.parametrize("argv,expected", [
    (["-p", "epochs=abc"], "epochs must be int, got 'abc'"),
    (["-p", "profile=smoke"], "--profile"),
    (["-p", "J2.profile=full"], "--profile"),
    (["-p", "nothing=1"], "no selected notebook"),
    (["-p", "J2.rate=0.1"], "J2 has no parameter 'rate'"),
    (["--only", "J1", "-p", "J3.epochs=1"], "J3 is not among the selected notebooks"),
    (["-p", "J9.epochs=1"], "there is no notebook J9; expected one of J1, J2, J3, J4, J5"),
    (["-p", "J2.epochs=0"], "-p J2.epochs (J2): epochs must be >= 1, got 0"),
    (["-p", "epochs"], "name=value"),
    (["--only", "J9"], "invalid choice"),
    (["--profile", "fast"], "invalid choice"),
])
def test_user_mistakes_are_one_line_exit_2_and_nothing_runs(tiny_project, capsys, argv, expected):
    with pytest.raises(SystemExit) if argv[0] in ("--only", "--profile") and "J3.epochs=1" not in argv else _nothing():
        code = pipeline.main(["--profile", "smoke", *argv] if argv[0] != "--profile" else argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
    if argv[0] not in ("--only", "--profile") or "J3.epochs=1" in argv:
        assert code == 2
    assert not tiny_project["out"].exists()  # nothing ran, nothing was written


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_full_profile_without_a_gpu_is_one_line(tiny_project, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the machine without CUDA")
    assert pipeline.main(["--profile", "full"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a CUDA GPU" in err


# ---------------------------------------------------------------- parameters cells

def test_parameters_cell_types_from_annotations_and_defaults():
    params = notebook_params.parse_parameters_cell(textwrap.dedent('''\
        profile = "auto"   # comment
        epochs: int = 30
        lr = 0.1
        bar: float = 85
        flag = True
        modes: list[str] = ["a"]
        plain_list = ["b"]
        limit: int | None = None
        other: Optional[float] = 2.0
        anything = None
        expr = 2 ** 10
        import math
    '''))
    kinds = {n: (p.type_name, p.optional) for n, p in params.items()}
    assert kinds == {"profile": ("str", False), "epochs": ("int", False), "lr": ("float", False),
                     "bar": ("float", False), "flag": ("bool", False), "modes": ("list", False),
                     "plain_list": ("list", False), "limit": ("int", True), "other": ("float", True),
                     "anything": (None, True), "expr": (None, True)}
    assert params["epochs"].default == 30 and params["modes"].default == ["a"]


@pytest.mark.parametrize("name,raw,value", [
    ("epochs", "5", 5), ("lr", "1", 1.0), ("name", '"a b"', "a b"), ("flag", "false", False), ("flag", "True", True), ("name", "123", "123"),
    ("modes", "['x', 'y']", ["x", "y"]), ("limit", "None", None), ("limit", "7", 7), ("anything", "abc", "abc"),
])
def test_values_are_converted_to_the_declared_type(name, raw, value):
    params = notebook_params.parse_parameters_cell(
        'epochs: int = 1\nlr = 0.1\nflag = True\nname = "a"\nmodes: list = []\nlimit: int | None = None\nanything = None\n')
    out = notebook_params.resolve([f"{name}={raw}"], {"J": params})["J"][name]
    assert out == value and type(out) is type(value)


@pytest.mark.parametrize("name,raw", [("epochs", "abc"), ("epochs", "1.5"), ("epochs", "True"), ("lr", "fast"),
                                      ("flag", "2"), ("modes", "x"), ("limit", "x")])
def test_values_of_the_wrong_type_are_refused(name, raw):
    params = notebook_params.parse_parameters_cell(
        'epochs: int = 1\nlr = 0.1\nflag = True\nmodes: list = []\nlimit: int | None = None\n')
    with pytest.raises(ParameterError, match=f"{name} must be"):
        notebook_params.resolve([f"{name}={raw}"], {"J": params})


def test_a_notebook_value_wins_over_a_global_one():
    params = notebook_params.parse_parameters_cell("epochs = 1\n")
    values = notebook_params.resolve(["J2.epochs=7", "epochs=3"], {"J1": params, "J2": params})
    assert values == {"J1": {"epochs": 3}, "J2": {"epochs": 7}}


def test_every_real_notebook_parameter_cell_parses():
    for nb, path in pipeline.notebook_paths().items():
        params = notebook_params.notebook_parameters(path)
        assert "profile" in params and "seed" in params, nb
        assert params["seed"].type_name == "int", nb


# ---------------------------------------------------------------- atomic writes

def test_atomic_files_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic.write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o640


def test_stale_temporaries_are_only_atomic_names(tmp_path):
    with atomic.atomic_path(tmp_path / "r.csv") as tmp:
        assert atomic.is_temporary(tmp)
    for name in ("r.csv", ".hidden", "x.tmp.ipynb", ".results.csv.tmp"):
        (tmp_path / name).write_text("")
    (tmp_path / ".r.csv.abcd_123.tmp.csv").write_text("")
    assert [p.name for p in atomic.stale_temporaries(tmp_path)] == [".r.csv.abcd_123.tmp.csv"]


def test_a_missing_notebook_is_one_line_exit_2(tiny_project, capsys):
    (tiny_project["root"] / "notebooks" / "J3_tiny.ipynb").unlink()
    assert pipeline.main(["--profile", "smoke", "--only", "J3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "J3_*.ipynb" in err


def test_temporaries_the_kernel_left_are_removed_after_a_failure(tiny_project):
    out = tiny_project["out"]
    failing = PARAMETERS + 'open(__import__("os").environ["FASTCIFAR_OUTPUTS"] + "/smoke/.r.csv.abcd1234.tmp.csv", "w").close()\n'
    tiny_notebook(tiny_project["root"] / "notebooks" / "J4_tiny.ipynb", failing)
    with pytest.raises(pipeline.NotebookFailed, match="J4 failed"):
        pipeline.run("smoke", ["J4"], ["fail=True"], progress=False)
    assert not list(out.rglob(".*.tmp*")) and (out / "notebooks" / "J4_tiny.failed.ipynb").is_file()


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
def test_end_kernels_kills_a_live_kernel_with_the_processes_it_started():
    # a stand-in kernel in its own session that started a worker of its own, as a data loader would
    kernel = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                               "print(w.pid, flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    worker = int(kernel.stdout.readline())
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    managers = [types.SimpleNamespace(provisioner=types.SimpleNamespace(process=kernel, pgid=os.getpgid(kernel.pid))),
                types.SimpleNamespace(provisioner=types.SimpleNamespace(process=finished, pgid=None)),
                types.SimpleNamespace()]  # one that never started a kernel
    pipeline._kernels_started[:] = managers
    pipeline.end_kernels()
    assert kernel.poll() == -signal.SIGKILL and not pipeline._kernels_started
    deadline = time.monotonic() + 10
    while alive(worker):
        assert time.monotonic() < deadline, "the kernel's worker outlived it"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a killed orphan may wait as a zombie for a parent that never reaps it
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.parametrize("pair,expected", [("J1.runs=0", "runs must be >= 1, got 0"),
                                           ("warmup_iters=-5", "warmup_iters must be >= 0, got -5"),
                                           ("J3.lr=0", "lr must be > 0, got 0.0"),
                                           ("bar=101", "bar must be >= 0 and <= 100, got 101.0")])
def test_the_series_parameters_are_range_checked_before_anything_runs(pair, expected):
    with pytest.raises(notebook_params.ParameterError, match=re.escape(expected)):
        pipeline.check_params([pair], pipeline.notebook_paths(Path(pipeline.__file__).resolve().parents[3]))
    assert pipeline.check_params(["warmup_iters=0", "runs=1"],
                                 pipeline.notebook_paths(Path(pipeline.__file__).resolve().parents[3]))["J1"] == \
        {"warmup_iters": 0, "runs": 1}


def test_checkpoints_are_snapshotted_as_links_and_figures_as_copies(tiny_project):
    out = tiny_project["out"]
    (out / "checkpoints").mkdir(parents=True)
    (out / "figures").mkdir()
    (out / "checkpoints" / "teacher.pth").write_bytes(b"w" * 1000)
    (out / "figures" / "curves.png").write_bytes(b"png")
    pipeline.take_snapshot(out)
    assert (out / "checkpoints" / "teacher.pth").stat().st_nlink == 2  # no copy of tens of MB
    assert (out / "figures" / "curves.png").stat().st_nlink == 1
    (out / "figures" / "curves.png").write_bytes(b"redrawn in place")  # as savefig does
    (out / "checkpoints" / "new.pth").write_bytes(b"n")
    assert pipeline.restore_snapshot(out)
    assert (out / "figures" / "curves.png").read_bytes() == b"png" and not (out / "checkpoints" / "new.pth").exists()
    assert (out / "checkpoints" / "teacher.pth").read_bytes() == b"w" * 1000


def test_an_outputs_folder_that_cannot_be_written_is_one_line_before_anything_runs(tiny_project, monkeypatch, capsys):
    a_file = tiny_project["out"].parent / "a_file"
    a_file.parent.mkdir(parents=True)
    a_file.write_text("")
    monkeypatch.setenv("FASTCIFAR_OUTPUTS", str(a_file))
    assert pipeline.main(["--profile", "smoke", "--only", "J1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot write to" in err and "FASTCIFAR_OUTPUTS" in err


def test_a_dead_kernel_is_one_line_and_its_own_messages_are_kept(tiny_project, capsys):
    out = tiny_project["out"]
    code = pipeline.main(["--profile", "smoke", "--only", "J1", "-p", "crash=True", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "J1: its kernel died" in err
    log = out / "notebooks" / "J1_tiny.kernel.log"
    assert str(log) in err and "native crash message" in log.read_text()
    assert not list((out / "notebooks").glob(".*")) and not (out / pipeline.SNAPSHOT_DIR).exists()
    pipeline.run("smoke", ["J1"], progress=False)  # a later success removes the old log
    assert not log.exists() and not list((out / "notebooks").glob(".*kernel.log"))


# ---------------------------------------------------------------- two runs at once

def start_pipeline(*argv: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    lib = str(Path(pipeline.__file__).resolve().parents[2])
    return subprocess.Popen([sys.executable, "-m", "fastcifar.pipeline", "--profile", "smoke", "--no-progress", *argv],
                            env={**os.environ, "PYTHONPATH": lib}, stdout=stdout, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, wait_s: float = 120):
    deadline = time.monotonic() + wait_s
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


def test_a_second_run_on_the_same_outputs_is_refused_and_the_first_keeps_its_results(tiny_project, capsys):
    out = tiny_project["out"]
    (out / "checkpoints").mkdir(parents=True)
    (out / "results.csv").write_text("from the last good run\n")
    (out / "checkpoints" / "model.pth").write_text("old weights")
    release = tiny_project["data"] / "release"
    first = start_pipeline("--only", "J3", "-p", "epochs=5", "-p", f"release={release}")
    try:
        wait_for((out / "started").exists, first)  # J3 has written its new results and checkpoint
        assert pipeline.main(["--profile", "smoke", "--only", "J1", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err
        assert f"in use by another run: pid {first.pid}" in err and "--only J3" in err and "--wait" in err
        # the first run's snapshot and new results are as it left them
        assert (out / pipeline.SNAPSHOT_DIR / "manifest.json").is_file()
        assert (out / "results.csv").read_text() == "epochs,name\n5,x\n"
        release.write_text("")
        _, first_err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, first_err
    assert (out / "results.csv").read_text() == "epochs,name\n5,x\n"
    assert (out / "checkpoints" / "model.pth").read_text() == "weights after 5 epochs"
    assert (out / "notebooks" / "J3_tiny.ipynb").is_file() and not (out / "notebooks" / "J1_tiny.ipynb").exists()
    assert not (out / pipeline.SNAPSHOT_DIR).exists() and not (out / pipeline.LOCK_NAME).exists()


def test_wait_runs_after_the_first_run_ends(tiny_project, tmp_path):
    out = tiny_project["out"]
    release = tiny_project["data"] / "release"
    first = start_pipeline("--only", "J3", "-p", "epochs=5", "-p", f"release={release}")
    second_log = tmp_path / "second.out"
    try:
        wait_for((out / "started").exists, first)
        with open(second_log, "w") as log:
            second = start_pipeline("--wait", "--only", "J2", "-p", "epochs=7", stdout=log)
        try:
            wait_for(lambda: "[pipeline] waiting for pid" in second_log.read_text(), second)
            assert f"pid {first.pid}" in second_log.read_text() and not (out / "notebooks" / "J2_tiny.ipynb").exists()
            with open(tmp_path / "third.out", "w") as log:  # one more waits, and is stopped while it waits
                third = start_pipeline("--wait", "--only", "J4", stdout=log)
            err = signal_when_ready(third, lambda: "waiting for pid" in (tmp_path / "third.out").read_text(),
                                    signal.SIGTERM)
            assert third.returncode == 143 and err.strip().endswith("; nothing was started (it was waiting for "
                                                                     "another run)"), err
            release.write_text("")
            assert first.wait(timeout=120) == 0
            _, second_err = second.communicate(timeout=120)
            assert second.returncode == 0, second_err
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()
    assert (out / "notebooks" / "J3_tiny.ipynb").is_file() and (out / "notebooks" / "J2_tiny.ipynb").is_file()
    assert (out / "results.csv").read_text() == "epochs,name\n7,x\n"  # the second ran after the first


def test_the_lock_of_a_run_killed_outright_is_taken_over_and_its_snapshot_put_back(tiny_project, capsys):
    from dataclasses import asdict, replace

    from fastcifar.core import lock

    out = tiny_project["out"]
    out.mkdir(parents=True)
    (out / "results.csv").write_text("good\n")
    pipeline.take_snapshot(out)
    (out / "results.csv").write_text("half of a killed run\n")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / pipeline.LOCK_NAME).write_text(json.dumps(asdict(replace(
        lock.this_process("python -m fastcifar.pipeline --only J4"), pid=gone.pid))))
    with pytest.raises(pipeline.NotebookFailed):  # the new run fails: its results are put back to the good ones
        pipeline.run("smoke", ["J4"], ["fail=True"], progress=False)
    said = capsys.readouterr().out
    assert f"took over the lock of pid {gone.pid}" in said and "put back" in said
    assert "SMOKE PROFILE" in said and "CPU timings, not GPU latency" in said  # said on the terminal too
    assert (out / "results.csv").read_text() == "good\n" and not (out / pipeline.LOCK_NAME).exists()


def test_the_start_up_clean_up_leaves_a_live_toolkit_run_alone(tmp_path):
    """A `train` writing under the outputs folder while the pipeline cleans up after a killed run."""
    from conftest import make_cifar

    out = tmp_path / "outputs"
    data = make_cifar(tmp_path / "data", "cifar100", per_file=400)
    lib = Path(pipeline.__file__).resolve().parents[2]
    train = subprocess.Popen([sys.executable, "-m", "fastcifar.train", "--config",
                              str(lib.parent / "configs" / "cifar100.yaml"), f"data_dir={data.base}",
                              f"output_dir={out / 'toolkit'}", "val_size=100", "blocks=[1,1,1]", "widths=[4,8,16]",
                              "batch_size=64", "device=cpu", "progress=false", "sanity_checks=false",
                              "tensorboard=false", "max_epochs=400", "checkpoint_every=1"],
                             env={**os.environ, "PYTHONPATH": str(lib), "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        runs = lambda: list((out / "toolkit" / "cifar100").glob("train-*/model_last.pth"))
        wait_for(runs, train)
        writing = runs()[0].parent / ".model_last.pth.abcd1234.tmp.pth"  # what a save in progress looks like
        writing.write_bytes(b"half")
        own = out / "figures" / ".j1.png.abcd1234.tmp.png"  # one of the pipeline's own, left by a killed run
        own.parent.mkdir(parents=True)
        own.write_bytes(b"half")
        done = pipeline.clean_stale(out)
        assert writing.exists() and train.poll() is None and not own.exists() and done == [f"removed {own}"]
        train.send_signal(signal.SIGTERM)
        _, err = train.communicate(timeout=60)
    finally:
        if train.poll() is None:
            train.kill()
    assert train.returncode == 143, err

"""pyproject.toml, constraints.txt, environment.yml and the Makefile agree with each other."""
import re
import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
from pathlib import Path

import fastcifar

REPO = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_one_version_number():
    project = pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fastcifar.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", fastcifar.__version__)


def test_console_script_extras_and_gpu_marker():
    data = pyproject()
    assert data["project"]["scripts"]["fastcifar"] == "fastcifar.cli:main"
    assert "pyyaml" in {name(r) for r in data["project"]["dependencies"]}
    extras = data["project"]["optional-dependencies"]
    assert {"papermill", "jupyter", "nbclient"} <= {name(r) for r in extras["notebooks"]}
    assert {"onnx", "onnxscript", "onnxruntime"} == {name(r) for r in extras["export"]}
    assert {"pytest", "nbval"} <= {name(r) for r in extras["test"]}
    assert extras["all"] == ["fastcifar[notebooks,export,test,tensorboard]"]  # make test covers the toolkit's logs
    assert {"tensorboard"} == {name(r) for r in extras["tensorboard"]}
    assert any(m.startswith("gpu:") for m in data["tool"]["pytest"]["ini_options"]["markers"])


def test_constraints_pin_the_evidence_versions_and_every_direct_dependency():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            package, version = line.split("==")
            pins[name(package)] = version
    assert pins["torch"] == "2.11.0" and pins["torchvision"] == "0.26.0" and pins["triton"] == "3.6.0"
    data = pyproject()["project"]
    direct = {name(r) for r in data["dependencies"]}
    for extra, reqs in data["optional-dependencies"].items():
        if extra != "all":
            direct |= {name(r) for r in reqs}
    assert not direct - set(pins), f"not pinned in constraints.txt: {sorted(direct - set(pins))}"


def test_make_installs_with_the_constraints_and_every_extra():
    makefile = (REPO / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in makefile and "-c $(CONSTRAINTS)" in makefile
    assert "EXTRAS ?= all" in makefile and "'.[$(EXTRAS)]'" in makefile
    test_gpu = makefile[makefile.index("\ntest-gpu:"):]
    assert "PYTHONPATH=lib$${PYTHONPATH:+:$$PYTHONPATH} $(PY) -m pytest -m gpu" in test_gpu and "report.json" in test_gpu and "report.xml" in test_gpu
    assert "env" not in test_gpu.splitlines()[1]  # the GPU host builds no environment


def test_environment_yml_names_the_same_packages():
    text = (REPO / "environment.yml").read_text()
    listed = {name(m) for m in re.findall(r"^\s+- ([A-Za-z][\w.-]*)\s*$", text, re.M)} - {"pip", "python"}
    data = pyproject()["project"]
    wanted = {name(r) for r in data["dependencies"]}
    for extra, reqs in data["optional-dependencies"].items():
        if extra != "all":
            wanted |= {name(r) for r in reqs}
    assert wanted <= listed, sorted(wanted - listed)
    assert "-c constraints.txt" in text and "-e .[all]" in text

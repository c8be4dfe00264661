"""The notebooks read as narratives: every code cell is a short call into the library (a few lines, no
function or lambda of its own) with a sentence before it, and the parameters cell stays the one place for a
run's settings. What the cells call is tested in test_decisions.py, test_steps.py and friends; nbval runs
the notebooks themselves (`make test`)."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("J*.ipynb"))
MAX_CODE_LINES = 8


def code_lines(source: str) -> list[str]:
    return [line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.stem)
def notebook(request):
    return request.param, nbformat.read(str(request.param), as_version=4)


def test_there_are_five_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["J1", "J2", "J3", "J4", "J5"]


def test_every_code_cell_is_short_and_defines_nothing(notebook):
    path, nb = notebook
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
            continue
        n = len(code_lines(cell.source))
        if n > MAX_CODE_LINES:
            problems.append(f"cell {i}: {n} lines of code (at most {MAX_CODE_LINES}: move the work into fastcifar.series)")
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                problems.append(f"cell {i}, line {node.lineno}: defines a {type(node).__name__}; a notebook calls the "
                                "library, it defines nothing")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_a_sentence_comes_before_every_code_cell(notebook):
    path, nb = notebook
    missing = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
               and (i == 0 or nb.cells[i - 1].cell_type != "markdown" or not nb.cells[i - 1].source.strip())]
    assert not missing, f"{path.name}: code cells {missing} have no markdown before them saying what and why"


def test_the_parameters_cell_is_the_only_place_for_settings(notebook):
    """One parameters cell, typed (`name: type = value`), and the first code cell."""
    path, nb = notebook
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and code[0] is tagged[0], f"{path.name}: the first code cell is the one parameters cell"
    untyped = [ast.unparse(s) for s in ast.parse(tagged[0].source).body if isinstance(s, ast.Assign)]
    assert not untyped, f"{path.name}: parameters without a type: {untyped}"


def test_the_notebooks_call_the_series_step_modules(notebook):
    """Each notebook's steps live in its own module of fastcifar.series (j1 ... j5)."""
    path, nb = notebook
    module = path.name[:2].lower()
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert f"{module}." in source and "from fastcifar.series import" in source


def test_checked_outputs_are_stored(notebook):
    """The cells nbval compares carry the output they are compared with."""
    path, nb = notebook
    checked = [c for c in nb.cells if c.cell_type == "code" and "# NBVAL_CHECK_OUTPUT" in c.source]
    assert checked, f"{path.name}: no hardware-independent cell is checked"
    assert all(c.outputs and c.execution_count for c in checked), path.name

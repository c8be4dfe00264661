"""Notebook parameters: what each notebook's `parameters` cell declares, and `-p` values checked against it.

The cell is read with `ast`, not papermill's line patterns: those drop annotations such as
`limit: int | None = None`. A parameter's type is its annotation (`epochs: int = 30`) when it has one,
else the type of its default (`epochs = 30`); a default of None without annotation admits any value.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "tuple": list, "dict": dict}
RESERVED = {"profile": "the profile is chosen with --profile (auto, full or smoke), not -p profile=..."}


class ParameterError(ValueError):
    """A user mistake in `-p` values; the message is one line saying what was expected."""


@dataclass(frozen=True)
class Parameter:
    name: str
    type_name: str | None  # one of TYPES, or None: any value
    optional: bool  # None is also accepted
    default: object
    annotation: str | None

    def describe(self) -> str:
        kind = self.type_name or "any"
        return f"{self.name} ({kind}{' or None' if self.optional and self.type_name else ''}, default {self.default!r})"


def _type_of_annotation(node: ast.expr) -> tuple[str | None, bool]:
    """(type name, None allowed) of `int`, `list[str]`, `int | None`, `Optional[int]`."""
    if isinstance(node, ast.Constant) and node.value is None:
        return None, True
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        return _type_of_annotation(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        parts = [_type_of_annotation(side) for side in (node.left, node.right)]
        names = {name for name, _ in parts if name}
        return (names.pop() if len(names) == 1 else None), any(opt for _, opt in parts)
    if isinstance(node, ast.Subscript):
        base = ast.unparse(node.value).rsplit(".", 1)[-1]
        if base == "Optional":
            return _type_of_annotation(node.slice)[0], True
        node = node.value
    name = ast.unparse(node).rsplit(".", 1)[-1].lower()
    return (name if name in TYPES else None), False


def parse_parameters_cell(source: str) -> dict[str, Parameter]:
    """Parameters declared by top-level assignments of a parameters cell, in order."""
    found: dict[str, Parameter] = {}
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            name, value, annotation = stmt.target.id, stmt.value, stmt.annotation
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name, value, annotation = stmt.targets[0].id, stmt.value, None
        else:
            continue
        try:
            default = ast.literal_eval(value) if value is not None else None
        except ValueError:
            default = ast.unparse(value)  # an expression: shown, never type-checked against
            type_name, optional = None, True
        else:
            type_name, optional = _type_of_default(default)
        if annotation is not None:
            type_name, optional = _type_of_annotation(annotation)
            optional = optional or default is None
        found[name] = Parameter(name, type_name, optional, default,
                                ast.unparse(annotation) if annotation is not None else None)
    return found


def _type_of_default(default) -> tuple[str | None, bool]:
    if default is None:
        return None, True
    for name in ("bool", "int", "float", "str", "list", "tuple", "dict"):  # bool before int: True is an int
        if isinstance(default, TYPES[name] if name != "tuple" else tuple):
            return ("list" if name == "tuple" else name), False
    return None, True


def notebook_parameters(path: str | Path) -> dict[str, Parameter]:
    """The parameters of the notebook at `path` (its cell tagged `parameters`)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"{Path(path).name} must have exactly one cell tagged 'parameters', found {len(cells)}")
    return parse_parameters_cell(cells[0].source)


def split_assignments(pairs: list[str]) -> list[tuple[str | None, str, str]]:
    """`-p` texts -> (notebook or None, name, raw value); `J2.epochs=5` is scoped to J2."""
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParameterError(f"parameters are name=value or NOTEBOOK.name=value (e.g. -p J2.epochs=5), got {pair!r}")
        scope, dot, name = key.rpartition(".")
        out.append((scope if dot else None, name, value))
    return out


def literal(raw: str):
    """A Python literal when `raw` is one (3, 0.5, True, None, ['a']), else the text itself."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


# Ranges of the series' numeric parameters, by name (the same name means the same thing in every
# notebook): (lowest, highest, whether the lowest itself is allowed). Checked with the types, before
# anything runs, so `-p runs=0` is one line and not a failure in the middle of a notebook.
RANGES = {
    "warmup_iters": (0, None, True), "measure_iters": (1, None, True), "runs": (1, None, True),
    "epochs": (1, None, True), "distill_epochs": (1, None, True), "batch_size": (1, None, True),
    "cutout": (0, 32, True), "seed": (0, None, True), "lr": (0, None, False), "T": (0, None, False),
    "label_smoothing": (0, 1, True), "alpha": (0, 1, True), "bar": (0, 100, True),
    "fp16_max_drop": (0, 100, True), "channels_last_min_gain": (0, 1, True), "e2e_target_us": (0, None, True),
}


def check_range(name: str, value, where: str):
    """`value` when it lies in RANGES[name] (or the name has no range, or the value is None)."""
    if name not in RANGES or value is None:
        return value
    low, high, low_allowed = RANGES[name]
    if (value < low if low_allowed else value <= low) or (high is not None and value > high):
        span = f"{'>=' if low_allowed else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        raise ParameterError(f"{where}: {name} must be {span}, got {value!r}")
    return value


def convert(param: Parameter, raw: str, where: str):
    """`raw` as a value of `param`'s type, or ParameterError naming what was expected."""
    value = literal(raw)
    if value is None and param.optional:
        return None
    kind = param.type_name
    if kind is None:
        return value
    if kind == "str":  # text stays text: -p name=123 is the string "123"; -p name='"a b"' is "a b"
        return value if isinstance(value, str) else raw
    if kind == "bool" and isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "list": isinstance(value, (list, tuple)),
          "dict": isinstance(value, dict)}[kind]
    if not ok:
        example = {"int": "5", "float": "0.5", "bool": "True", "list": "\"['a', 'b']\"", "dict": "\"{'a': 1}\""}[kind]
        raise ParameterError(f"{where}: {param.name} must be {kind}{' or None' if param.optional else ''}, "
                             f"got {raw!r} (e.g. -p {param.name}={example})")
    value = float(value) if kind == "float" else list(value) if kind == "list" else value
    return check_range(param.name, value, where) if kind in ("int", "float") else value


def resolve(pairs: list[str], declared: dict[str, dict[str, Parameter]],
            notebooks: list[str] | None = None) -> dict[str, dict]:
    """Values for each selected notebook ({notebook: {name: value}}) from `-p` texts.

    `declared` maps every selected notebook to its parameters. A global `name=value` goes to each selected
    notebook that declares `name` (an error if none does); `NB.name=value` only to NB and overrides a
    global value there. `notebooks` names every notebook of the series (for the message when NB is none
    of them). Raises ParameterError for the first mistake."""
    per_notebook: dict[str, dict] = {nb: {} for nb in declared}
    scoped_first = sorted(split_assignments(pairs), key=lambda item: item[0] is not None)  # scoped ones win
    for scope, name, raw in scoped_first:
        if name in RESERVED:
            raise ParameterError(RESERVED[name])
        if scope is not None:
            if notebooks is not None and scope not in notebooks:
                raise ParameterError(f"-p {scope}.{name}: there is no notebook {scope}; expected one of "
                                     f"{', '.join(notebooks)}")
            if scope not in declared:
                raise ParameterError(f"-p {scope}.{name}: {scope} is not among the selected notebooks "
                                     f"{sorted(declared)}; select it with --only or drop the value")
            targets = [scope]
            if name not in declared[scope]:
                raise ParameterError(f"-p {scope}.{name}: {scope} has no parameter {name!r}; its parameters: "
                                     + ", ".join(p for p in declared[scope] if p not in RESERVED))
        else:
            targets = [nb for nb, params in declared.items() if name in params]
            if not targets:
                known = sorted({p for params in declared.values() for p in params} - set(RESERVED))
                raise ParameterError(f"-p {name}: no selected notebook ({', '.join(declared)}) has a parameter "
                                     f"{name!r}; known: {', '.join(known)}")
        for nb in targets:
            per_notebook[nb][name] = convert(declared[nb][name], raw, f"-p {scope + '.' if scope else ''}{name} ({nb})")
    return per_notebook

"""The package layout: core/ under the two wings (series/, toolkit/), thin `python -m` entry points.

Every import of a fastcifar module is read with `ast` (relative or absolute, at module level or inside a
function) and checked against the rooms' rules:
- core/ imports only core/;
- series/ imports only core/ and series/;
- toolkit/ imports only core/ and toolkit/;
- no module imports itself back through a chain of imports;
- the top-level entry points are a few lines that hand over to one wing.
The package root (`fastcifar/__init__.py`, the version number) may be imported from anywhere: it imports
nothing of the package itself.
"""
import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"
PACKAGE = LIB / "fastcifar"
ROOT = "fastcifar"
ALLOWED = {"core": {"core"}, "series": {"core", "series"}, "toolkit": {"core", "toolkit"}}
ENTRY_POINT_MAX_LINES = 15
NOT_ENTRY_POINTS = {"__init__", "cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    """core, series or toolkit; "top" for the modules beside them (entry points, cli, the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "top"


def imports(module: str) -> list[tuple[str, int, str]]:
    """(imported fastcifar module, line, the import as written) for every import in `module`'s file."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                    written = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                    found.append((alias.name, node.lineno, written))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = package[: len(package) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not (base == ROOT or base.startswith(ROOT + ".")):
                continue
            written = f"from {'.' * node.level}{node.module or ''} import " + ", ".join(
                a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno, written))
    return found


GRAPH = {m: imports(m) for m in MODULES}


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(LIB.parent)}:{line}"


def test_the_rooms_exist():
    for name in ("fastcifar.core", "fastcifar.core.kernels", "fastcifar.series", "fastcifar.toolkit"):
        assert name in MODULES, f"{name} is missing (expected {name.replace('.', '/')}/__init__.py under lib/)"


def test_every_fastcifar_import_names_a_module_that_exists():
    problems = [f"{where(m, line)}: `{text}` -> {target} does not exist"
                for m, found in GRAPH.items() for target, line, text in found if target not in MODULES]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("wing", sorted(ALLOWED))
def test_each_room_imports_only_what_it_stands_on(wing):
    problems = []
    for m, found in GRAPH.items():
        if room(m) != wing:
            continue
        for target, line, text in found:
            if target == ROOT:
                continue  # the package root: the version number only
            if room(target) not in ALLOWED[wing]:
                problems.append(f"{where(m, line)}: `{text}` imports {target} ({room(target)}); {wing}/ may import "
                                f"only {' and '.join(r + '/' for r in sorted(ALLOWED[wing]))}")
    assert not problems, "\n".join(problems)


def test_the_package_root_imports_nothing_of_the_package():
    found = GRAPH[ROOT]
    assert not found, f"{where(ROOT, found[0][1])}: `{found[0][2]}`: fastcifar/__init__.py holds the version only"


def test_no_import_cycle():
    edges = {m: sorted({t for t, _, _ in found if t in MODULES and t != m}) for m, found in GRAPH.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    lines = []
    for cycle in cycles:
        steps = []
        for a, b in zip(cycle, cycle[1:]):
            line, text = next((line, text) for t, line, text in GRAPH[a] if t == b)
            steps.append(f"{where(a, line)} `{text}`")
        lines.append(" -> ".join(cycle) + ": " + "; ".join(steps))
    assert not cycles, "import cycle(s):\n" + "\n".join(lines)


def test_top_level_entry_points_are_short():
    entry_points = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem not in NOT_ENTRY_POINTS}
    commands = {"train", "lr_finder", "grid_search", "evaluate", "sweep", "pipeline", "kernel_bench", "data"}
    assert commands <= set(entry_points), f"missing entry points: {sorted(commands - set(entry_points))}"
    long = []
    for path in entry_points.values():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > ENTRY_POINT_MAX_LINES:
            long.append(f"{path.relative_to(LIB.parent)}: {n} lines (at most {ENTRY_POINT_MAX_LINES}: a docstring, one "
                        "import and the call; the code belongs in core/, series/ or toolkit/)")
    assert not long, "\n".join(long)


def test_console_script_commands_name_modules_that_exist():
    tree = ast.parse(MODULES["fastcifar.cli"].read_text(encoding="utf-8"))
    table = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "COMMANDS" for t in node.targets))
    targets = {key.value: value.elts[0].value for key, value in zip(table.keys, table.values)}
    missing = {name: target for name, target in targets.items() if target not in MODULES}
    assert not missing, f"lib/fastcifar/cli.py COMMANDS names modules that do not exist: {missing}"


def test_no_module_uses_another_modules_private_names():
    """`_name` is private to its module: a helper that another module needs is public there, under a name."""
    problems = []
    for m, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        aliases = {}  # local name -> the fastcifar module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for target, line, text in GRAPH[m]:
                    if line == node.lineno:
                        for alias in node.names:
                            if alias.name.startswith("_") and not alias.name.startswith("__"):
                                problems.append(f"{where(m, line)}: `{text}` imports the private {alias.name}")
                            if f"{target.rsplit('.', 1)[-1]}" == alias.name and target in MODULES:
                                aliases[alias.asname or alias.name] = target
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                problems.append(f"{where(m, node.lineno)}: {node.value.id}.{node.attr} is private to {aliases[node.value.id]}")
    assert not problems, "\n".join(problems)

"""The layout's rules: the library depends on torch alone, and imports go one way with no cycle."""
import ast
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ibnorm"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every ibnorm module that ``name`` imports, at module level or inside functions.

    ``from . import x`` names the submodule ``x`` when it is one, else the package itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]):
    """A list of modules forming a cycle, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_walk_sees_relative_and_nested_imports():
    graph = import_graph()
    assert "ibnorm.ops" in graph["ibnorm.functional"] | graph["ibnorm.layers"]
    assert "ibnorm.kernels.cpu" in graph["ibnorm.functional"]
    assert "ibnorm.kernels.triton_rows" in graph["ibnorm.functional"]  # imported inside a function
    assert "ibnorm.lab.info.recorder" in graph["ibnorm.lab.train"]  # likewise
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_anywhere():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_library_never_imports_the_lab():
    offenders = {name: sorted(m for m in deps if m.startswith("ibnorm.lab"))
                 for name, deps in import_graph().items() if not name.startswith("ibnorm.lab")}
    assert not {k: v for k, v in offenders.items() if v}


def test_import_ibnorm_loads_nothing_beyond_torch():
    """In a fresh interpreter, ``import ibnorm`` after ``import torch`` adds only ibnorm's library modules."""
    code = textwrap.dedent("""
        import sys, torch
        before = set(sys.modules)
        import ibnorm
        print("\\n".join(sorted(set(sys.modules) - before)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    foreign = [m for m in out if not (m == "ibnorm" or m.startswith("ibnorm."))]
    assert foreign == [], f"import ibnorm loaded {foreign}"
    assert not [m for m in out if m.startswith(("ibnorm.lab", "ibnorm.info"))]
    assert "ibnorm.functional" in out and "ibnorm.layers" in out


def test_the_library_requires_torch_alone():
    import tomllib
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0].split("=")[0] for d in project["dependencies"]] == ["torch"]
    assert project["scripts"]["ibnorm"] == "ibnorm.lab.cli:main"

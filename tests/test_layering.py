"""The house's layering: imports point down (orchestrator -> workers -> compscale), importing the
science loads no upper layer, and no module imports itself back through others: no circle,
inside a package or across, at module level or inside a function."""

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest
from helpers import REPO

LAYERS = {"compscale": 0, "workers": 1, "orchestrator": 2}


def module_imports(root: Path, packages: list[str]) -> dict[str, set[str]]:
    """Each module of `packages` under `root` -> the modules of those packages it imports, at any
    depth of its code. `from a.b import c` counts `a.b.c` when that is a module, else `a.b`."""
    modules = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        imported = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported |= {known(f"{node.module}.{alias.name}") for alias in node.names}
        graph[module] = imported - {None, module}
    return graph


def _runtime_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:`, which only type checkers import (an
    annotation naming a class of a module that imports this one is no circle at run time)."""
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for statement in node.body
        for inner in ast.walk(statement)
    }
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (its modules in order, the first repeated last), or None."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        return error.args[1]
    return None


def test_no_module_imports_itself_back_through_others():
    assert import_circle(module_imports(REPO, list(LAYERS))) is None


def test_the_circle_check_finds_a_planted_circle_inside_a_package(tmp_path):
    package = tmp_path / "workers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text("from workers.ladder import Ladder\n")
    (package / "ladder.py").write_text("def run():\n    from workers.train import train\n")
    (package / "config.py").write_text("import workers.ladder\n")
    circle = import_circle(module_imports(tmp_path, ["workers"]))
    assert circle is not None and set(circle) == {"workers.train", "workers.ladder"}


@pytest.mark.parametrize("planted", ["orchestrator/driver.py", "compscale/formats/__init__.py"])
def test_the_circle_check_finds_a_circle_planted_in_a_copy_of_the_house(tmp_path, planted):
    """The real packages, copied, with one import added that closes a circle."""
    for package in LAYERS:
        subprocess.run(["cp", "-r", str(REPO / package), str(tmp_path)], check=True)
    target = tmp_path / planted
    first = next(iter(sorted(module_imports(tmp_path, list(LAYERS))[_module(planted)])))
    importer = tmp_path / (first.replace(".", "/") + ".py")
    if not importer.exists():
        importer = tmp_path / first.replace(".", "/") / "__init__.py"
    importer.write_text(importer.read_text() + f"\n\ndef _back():\n    import {_module(planted)}\n")
    assert target.exists()
    assert import_circle(module_imports(tmp_path, list(LAYERS))) is not None


def _module(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def test_importing_compscale_loads_no_upper_layer():
    code = "import sys, compscale, compscale.reduce, compscale.report; print(sorted(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert "orchestrator" not in loaded and "'workers" not in loaded


def test_imports_point_down_except_the_one_lazy_re_export():
    """orchestrator -> workers -> compscale; the only upward import is `open_store`'s."""
    upward = []
    for package, level in LAYERS.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [alias.name for alias in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                )  # fmt: skip
                for name in names:
                    top = name.split(".")[0]
                    if LAYERS.get(top, -1) > level:
                        upward.append(f"{path.relative_to(REPO)}: {name}")
    assert upward == ["compscale/__init__.py: orchestrator.api"]

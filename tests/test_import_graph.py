"""The imports inside ``opencir.models`` and ``opencir.train`` form a DAG.

Cycles there used to be held together by imports hidden inside functions (a module-level
cycle makes the import order decide whether ``import opencir.models.X`` works at all). Now
no import of an opencir module, at module level or inside a function, closes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import opencir
from opencir.models.base import CIRModel

SOURCE = Path(opencir.__file__).parent
PACKAGES = ("opencir.models", "opencir.train")


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def _top_level_statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Module-level statements, looking into ``if``/``try``/``with`` but not functions/classes."""
    found: list[ast.stmt] = []
    for node in body:
        found.append(node)
        if isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, block, []):
                    found += _top_level_statements(getattr(child, "body", [child]))
    return found


def module_imports(name: str, path: Path, known: set[str], everywhere: bool = False) -> set[str]:
    """The opencir modules ``name`` imports (``from pkg import mod`` counted).

    Module-level imports only, or with ``everywhere`` also those inside functions.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if everywhere else _top_level_statements(tree.body)
    targets: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                )
            targets.add(base.strip("."))
            targets |= {f"{base}.{alias.name}" for alias in node.names}
    return {t for t in targets if t in known and t != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph(prefixes: tuple[str, ...], everywhere: bool = False) -> dict[str, set[str]]:
    modules = all_modules()
    inside = {m for m in modules if m.startswith(prefixes)}
    return {m: module_imports(m, modules[m], inside, everywhere) for m in sorted(inside)}


def test_cycle_finder_finds_a_cycle_and_accepts_a_dag() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_parser_sees_module_level_imports_only(tmp_path: Path) -> None:
    path = tmp_path / "mod.py"
    path.write_text(
        "from opencir.models import base\n"
        "import opencir.models.config\n"
        "if True:\n    from opencir.models.hub import offline\n"
        "def f():\n    from opencir.models.registry import load\n"
    )
    known = {f"opencir.models.{m}" for m in ("base", "config", "hub", "registry")}
    found = module_imports("opencir.models.x", path, known | {"opencir.models"})
    assert found == known - {"opencir.models.registry"} | {"opencir.models"}
    assert module_imports("opencir.models.x", path, known, everywhere=True) == known


@pytest.mark.parametrize("package", PACKAGES)
def test_module_level_imports_form_a_dag(package: str) -> None:
    graph = import_graph((package,))
    assert len(graph) > 5
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


@pytest.mark.parametrize("everywhere", [False, True])
def test_models_and_train_together_form_a_dag(everywhere: bool) -> None:
    """Also with the imports inside functions: none of them dodges a cycle any more."""
    cycle = find_cycle(import_graph(PACKAGES, everywhere))
    assert cycle is None, " -> ".join(cycle or [])


def test_the_model_base_class_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        CIRModel(None, None)  # type: ignore[abstract]
    assert {"embed_dim", "forward_query", "forward_target"} <= CIRModel.__abstractmethods__

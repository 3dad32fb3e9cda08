"""The stage order of docs/architecture.md holds in the code, and every module is shape-checked under BEARTYPE=1.

The order is written once, in docs/architecture.md (the line that starts with "Layer order"); this test reads it
there. An import (module level or inside a function) may reach its own stage or an earlier one, never a later
one or a peer on the same floor; the few conveniences that do are named below, each imported inside the
method that offers it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "steerheal"
BASE_MODULES = {"errors", "files", "log", "boundary", "seeds", "typecheck", "data", "dist"}
# (importer, imported, the method that offers it): upward on purpose, imported inside that method only
CONVENIENCES = {("steerheal.read.vector", "steerheal.dose.calibrate", "calibrate")}
# modules the import hook cannot or need not wrap: the hook's own checker, and the CLI (imported by its entry
# point after steerheal's hook is gone; its functions parse argv and call checked code)
UNCHECKED = {"steerheal.typecheck", "steerheal.cli"}


def layer_order() -> list[set[str]]:
    """[{stages on floor 0}, {floor 1}, ...] from the "Layer order" line of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    match = re.search(r"^Layer order[^`]*`([^`]+)`", text, re.MULTILINE)
    assert match, "docs/architecture.md lost its 'Layer order ... `a < b, c < d`' line"
    return [{s.strip() for s in floor.split(",")} for floor in match.group(1).split("<")]


def stage_of(module: str) -> str:
    """The stage of a steerheal module: its folder, `base` for the shared top-level modules, `cli`."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] == "__main__":
        return "cli"  # `python -m steerheal` is the command line
    return "base" if parts[1] in BASE_MODULES else parts[1].removesuffix(".py")


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(source: str, module: str) -> list[tuple[str, str | None]]:
    """(imported steerheal module, enclosing function or None) for every import of a steerheal module in `source`,
    at module level and inside functions; `if TYPE_CHECKING:` blocks never run and are skipped."""
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("steerheal"):
                if child.module == "steerheal" or _is_package(child.module):
                    found.extend((f"{child.module}.{a.name}", inner) for a in child.names)
                else:
                    found.append((child.module, inner))
            elif isinstance(child, ast.Import):
                found.extend((a.name, inner) for a in child.names if a.name.startswith("steerheal"))
            visit(child, inner)

    visit(ast.parse(source), None)
    return found


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / Path(*module.split("."))).is_dir()


def violations(sources: dict[str, str]) -> list[str]:
    """Every import in `sources` ({module: source}) of a later stage or a peer on the same floor."""
    floor = {stage: i for i, stages in enumerate(layer_order()) for stage in stages}
    out = []
    for module, source in sources.items():
        mine = stage_of(module)
        if mine == "root":
            continue  # the package root re-exports the public API of every stage
        for target, function in imports(source, module):
            theirs = stage_of(target)
            if theirs == mine or floor[theirs] < floor[mine]:
                continue
            if (module, target, function) in CONVENIENCES:
                continue
            where = f"in {function}()" if function else "at module level"
            out.append(f"{module} ({mine}) imports {target} ({theirs}) {where}")
    return out


def package_sources() -> dict[str, str]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[module] = path.read_text()
    return out


def test_every_module_has_a_stage_in_the_documented_order():
    stages = {stage for floor in layer_order() for stage in floor}
    unknown = {m: stage_of(m) for m in package_sources() if stage_of(m) not in stages | {"root"}}
    assert not unknown, f"modules outside every documented stage: {unknown}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} - BASE_MODULES
    assert folders <= stages, f"stage folders missing from the documented order: {folders - stages}"


def test_no_import_reaches_a_later_stage():
    assert violations(package_sources()) == []


def test_the_checker_catches_a_planted_upward_edge():
    sources = package_sources()
    planted = dict(sources)
    planted["steerheal.lm.texts"] += "\n\ndef f():\n    from steerheal.loop import rounds\n"
    planted["steerheal.read.vector"] += "\nfrom steerheal.dose.calibrate import search\n"
    planted["steerheal.adapter.gated"] += "\nfrom steerheal.read.vector import Vector\n"
    found = violations(planted)
    assert any("steerheal.lm.texts (lm) imports steerheal.loop.rounds (loop) in f()" in v for v in found)
    # the convenience is allowed only inside its own method, not at module level
    assert any("vector (read) imports steerheal.dose.calibrate (dose) at module level" in v for v in found)
    # peers on one floor do not import each other
    assert any("steerheal.adapter.gated (adapter) imports steerheal.read.vector (read)" in v for v in found)
    assert len(found) == 3


def test_no_import_cycles_between_modules():
    """Module-level and function-level imports together form no cycle except through a named convenience."""
    sources = package_sources()
    edges: dict[str, set[str]] = {m: set() for m in sources}
    for module, source in sources.items():
        if module == "steerheal" or module.count(".") < 1:
            continue
        for target, function in imports(source, module):
            if target in sources and target != module and not target.startswith(module + "."):
                if (module, target, function) in CONVENIENCES or _method_convenience(module, target):
                    continue
                edges[module].add(target)
    for package in [m for m in sources if _is_package(m)]:
        edges[package] = set()  # a stage's __init__ re-exports its own modules; not an edge of the design

    state: dict[str, int] = {}

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state:
                found = cycle_from(nxt, [*path, node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = cycle_from(node, [])
            assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def _method_convenience(module: str, target: str) -> bool:
    """Readout.monitor and Readout.quality import their modules inside the method (those modules use Readout)."""
    return module == "steerheal.read.readout" and target in {"steerheal.read.monitor", "steerheal.read.quality"}


def _checked(obj: object) -> bool:
    """Whether jaxtyping's wrapper (the import hook's `jaxtyped`) is somewhere in obj's `__wrapped__` chain."""
    for _ in range(10):
        code = getattr(obj, "__code__", None)
        if code is not None and code.co_filename.replace("\\", "/").endswith("jaxtyping/_decorator.py"):
            return True
        obj = getattr(obj, "__wrapped__", None)
        if obj is None:
            return False
    return False


def _functions(module: object) -> list[object]:
    out = []
    for obj in vars(module).values():
        if getattr(obj, "__module__", None) != module.__name__:  # type: ignore[attr-defined]
            continue
        if inspect.isfunction(obj):
            out.append(obj)
        elif inspect.isclass(obj):
            for member in vars(obj).values():
                member = getattr(member, "__func__", None) or getattr(member, "fget", None) or member
                if inspect.isfunction(member) or hasattr(member, "__wrapped__"):
                    out.append(member)
    return out


@pytest.mark.skipif(os.environ.get("BEARTYPE") != "1", reason="shape checks are installed only under BEARTYPE=1")
def test_every_module_is_shape_checked():
    """Each steerheal module's functions carry the jaxtyping wrapper: a module escapes the checks when nothing
    imports it inside `steerheal/__init__`'s `_shape_checked()` block. Before the stage folders 41 modules
    were checked; none may drop out."""
    import steerheal

    unchecked = []
    checked = set()
    for info in pkgutil.walk_packages(steerheal.__path__, "steerheal."):
        module = importlib.import_module(info.name)
        functions = _functions(module)
        if not functions:
            continue
        if any(_checked(f) for f in functions):
            checked.add(info.name)
        elif info.name not in UNCHECKED:
            unchecked.append(info.name)
    assert unchecked == [], f"not imported under the shape-check hook: {unchecked}"
    assert len(checked) >= 41

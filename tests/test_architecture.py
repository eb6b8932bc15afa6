"""The house's rule: imports point down, never up, and no package imports a sibling on its
own floor (issue 20). A floor lists the packages (or modules) that stand on it; a module may
import from its own package and from any floor below its own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Top to bottom. "a | b" share a floor: neither may import the other.
FLOORS = [
    "pairlab",
    "tui",
    "engine.service",
    "engine.session | engine.report",
    "engine.loop",
    "engine.scale",
    "engine.run | engine.journal | engine.agents",
    "engine.workspace",
    "engine.base",
    "nanochat",
]
SOURCE_DIRS = ("pairlab", "tui", "engine", "nanochat")
MAX_FUNCTION_LINES = 60          # issue 21: a function reads on one screen
MAX_MODULE_LINES = 400


def floor_of(module: str) -> tuple[int, str]:
    """(floor index, the unit on it) of a dotted module name; (-1, '') if not ours."""
    for index, floor in enumerate(FLOORS):
        for unit in (u.strip() for u in floor.split("|")):
            if module == unit or module.startswith(unit + "."):
                return index, unit
    return -1, ""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import in the source, at any depth (lazy imports count)."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            # `from engine import loop` imports the module engine.loop, not just engine
            modules = [f"{base}.{alias.name}" for alias in node.names
                       if _is_module(f"{base}.{alias.name}")]
            found += [(node.lineno, name) for name in modules or [base]]
    return found


def our_files() -> list[Path]:
    return [path for folder in SOURCE_DIRS for path in sorted((ROOT / folder).rglob("*.py"))]


def check(module: str, source: str, where: str, is_package: bool = False) -> list[str]:
    """What in this module's imports breaks the rule."""
    here, unit = floor_of(module)
    assert here >= 0, f"{module} stands on no floor: add it to FLOORS"
    found = []
    for line, imported in imports_of(module, source, is_package):
        there, other = floor_of(imported)
        if there < 0 or other == unit or not _is_module(imported):
            continue
        if there < here:
            found.append(f"{where}:{line} imports {imported}, a floor up")
        elif there == here:
            found.append(f"{where}:{line} imports {imported}, a sibling on its own floor")
    return found


def violations() -> list[str]:
    return [v for path in our_files() if module_name(path) != "engine"   # a docstring only
            for v in check(module_name(path), path.read_text(), str(path.relative_to(ROOT)),
                           path.name == "__init__.py")]


def _is_module(dotted: str) -> bool:
    """Whether `dotted` names one of our modules or packages (not a name inside one)."""
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_imports_point_down_and_never_to_a_sibling():
    assert violations() == []


def test_every_package_says_what_it_holds():
    for init in (ROOT / "engine").rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(ROOT)} has no docstring that says what it holds"


def test_no_module_is_over_the_size_of_a_room():
    # nanochat/ is the training setup: one readable file per job, as autoresearch's train.py
    big = [f"{path.relative_to(ROOT)}: {n} lines" for path in our_files()
           if not path.is_relative_to(ROOT / "nanochat")
           and (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES]
    assert big == []


def test_no_function_in_the_engine_or_the_app_is_over_a_screen():
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines"
            for root in ("engine", "tui") for path in (ROOT / root).rglob("*.py")
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (length := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES]
    assert long == []


def test_the_rule_catches_an_arrow_up_and_a_sibling():
    assert check("engine.base.probe", "from engine.loop import planner\n", "probe.py") == [
        "probe.py:1 imports engine.loop.planner, a floor up"]
    assert check("engine.run.probe", "def f():\n    import engine.journal.db\n", "probe.py") == [
        "probe.py:2 imports engine.journal.db, a sibling on its own floor"]
    assert check("engine.loop.probe", "from engine.run import runner\n", "probe.py") == []

"""The shape of the house (issue 11): files small enough to read in one sitting, a CLI
that only parses and renders, and the planner's subpackages layered one way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400  # a module, any package
MAX_CLI_LINES = 150  # a command module: parse, call one function, render


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _imported(path: Path) -> set[str]:
    """Every module name `path` imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_module_is_under_the_size_limit():
    too_long = {str(p.relative_to(ROOT)): _lines(p) for package in ("lofi", "planner")
                for p in (ROOT / package).rglob("*.py") if _lines(p) > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"


def test_every_cli_module_is_thin():
    too_long = {p.name: _lines(p) for p in (ROOT / "lofi" / "cli").glob("*.py") if _lines(p) > MAX_CLI_LINES}
    assert not too_long, f"CLI modules over {MAX_CLI_LINES} lines: {too_long}"


def test_the_cli_leaves_training_and_ranking_to_the_library():
    """A command calls the library's entry points; it does not drive the stages, the
    estimate or the ranking itself."""
    inner = ("lofi.train.pipeline", "lofi.train.loop", "lofi.train.lofi_stage", "planner.estimate",
             "planner.choose.rank_candidates", "planner.search", "planner.tracing")
    found = {p.name: sorted(n for n in _imported(p) if any(n == i or n.startswith(i + ".") for i in inner))
             for p in (ROOT / "lofi" / "cli").glob("*.py")}
    assert not {name: hits for name, hits in found.items() if hits}


def test_planner_subpackages_are_layered():
    """hardware/ stands alone; cost/ never reads traces; tracing/ takes only the event
    codes from cost/ (the allocator's input format)."""
    def imports_of(folder: str) -> dict[str, set[str]]:
        return {p.name: _imported(p) for p in (ROOT / "planner" / folder).glob("*.py")}

    for name, names in imports_of("hardware").items():
        assert not any(n.startswith(("planner.tracing", "planner.cost")) for n in names), name
    for name, names in imports_of("cost").items():
        assert not any(n.startswith("planner.tracing") for n in names), name
    for name, names in imports_of("tracing").items():
        from_cost = {n for n in names if n.startswith("planner.cost")}
        assert from_cost <= {"planner.cost.allocator", "planner.cost.allocator.ALLOC",
                             "planner.cost.allocator.FREE"}, (name, from_cost)


def test_the_checks_see_a_long_file_and_a_function_level_import(tmp_path):
    long = tmp_path / "long.py"
    long.write_text("x = 1\n" * (MAX_LINES + 1))
    assert _lines(long) > MAX_LINES
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from planner.cost import replay\n")
    assert "planner.cost.replay" in _imported(lazy)

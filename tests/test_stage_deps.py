"""Every project file a stage imports is one of its deps in dvc.yaml, and nothing else is.

DVC reruns a stage when one of its deps changes. A module the stage imports but does not list
(say, the class names in mlpipe/data/specs.py) would leave its outputs stale after an edit; one
it lists but never imports reruns it for nothing. The closure is derived from the code, imports
inside functions included, so the list cannot drift.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name, or None for a third-party module."""
    parts = name.split(".")
    for candidate in (
        REPO.joinpath(*parts).with_suffix(".py"),
        REPO.joinpath(*parts, "__init__.py"),
    ):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """Every module an `import` anywhere in `path` may load, at module level or in a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def import_closure(module: str) -> set[str]:
    """The project files `python -m <module>` may import, relative to the repository."""
    seen: set[Path] = set()
    parts = module.split(".")
    todo = [".".join(parts[: end + 1]) for end in range(len(parts))]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            parts = name.split(".")
            todo.extend(".".join(parts[: end + 1]) for end in range(len(parts)))
    return {str(path.relative_to(REPO)) for path in seen}


def code_deps(stage: dict) -> set[str]:
    return {str(dep) for dep in stage["deps"] if str(dep).endswith(".py")}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_its_import_closure(name: str) -> None:
    module = STAGES[name]["cmd"].split("python -m ", 1)[1].split()[0]
    closure = import_closure(module)
    listed = code_deps(STAGES[name])
    assert not closure - listed, f"{name} imports these but dvc.yaml does not list them"
    assert not listed - closure, f"{name} lists these in dvc.yaml but never imports them"


def test_closure_sees_imports_inside_functions(tmp_path: Path) -> None:
    # stages/evaluate.py imports mlpipe.model.loading only inside main(): it must still count.
    assert "mlpipe/model/loading.py" in import_closure("stages.evaluate")
    assert "mlpipe/data/specs.py" in import_closure("stages.plot")

"""The house's limits, checked so they hold after the next feature too: modules short enough to
read, stages on one page, empty package files, a README layout that names every module, and
a pre-commit hook that does what the README says."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, project_copy

MODULE_LINES = 400
STAGE_LINES = 100
STAGE_MAIN_LINES = 60

MODULES = sorted(REPO.glob("mlpipe/**/*.py"))
STAGES = sorted(p for p in REPO.glob("stages/*.py") if p.name != "__init__.py")


def lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_needs_more_than_400_lines(path: Path) -> None:
    assert lines(path) <= MODULE_LINES, f"{path.relative_to(REPO)}: split it by what it holds"


@pytest.mark.parametrize("path", STAGES, ids=lambda p: p.name)
def test_a_stage_reads_on_one_page(path: Path) -> None:
    assert lines(path) <= STAGE_LINES
    tree = ast.parse(path.read_text(encoding="utf-8"))
    (main,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert main.end_lineno - main.lineno + 1 <= STAGE_MAIN_LINES, "move the work into mlpipe"


PACKAGE_FILES = sorted(
    p for top in ("mlpipe", "stages", "tests") for p in REPO.glob(f"{top}/**/__init__.py")
)


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_package_files_hold_a_docstring_only(path: Path) -> None:
    """No re-exports: importing a package (mlpipe.model, say) must not import its modules,
    or evaluate and plot would pay for Keras."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def test_the_readme_stays_under_300_lines() -> None:
    """It speaks to a user who cloned the repository; the rest is in docs/, linked from it."""
    assert lines(REPO / "README.md") < 300


def test_every_docs_link_leads_to_a_file() -> None:
    for page in [REPO / "README.md", *REPO.glob("docs/**/*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links {target}"


def readme_layout() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_layout_names_every_module_and_only_those() -> None:
    layout = readme_layout()
    named = set(re.findall(r"\b([a-z_]+\.py)\b", layout))
    for folder in ("mlpipe", "mlpipe/data", "mlpipe/model", "mlpipe/tracking", "mlpipe/report"):
        assert f"{folder}/" in layout, folder
    missing = [
        str(path.relative_to(REPO))
        for path in [*MODULES, *STAGES]
        if path.name != "__init__.py" and path.name not in named
    ]
    assert missing == [], "the README's layout section omits these"
    existing = {path.name for path in [*MODULES, *STAGES]}
    scripts = {path.name for path in REPO.glob("*/*.py")}
    assert named - existing - scripts == set(), "the README names modules that do not exist"


def test_pre_commit_runs_ruff_and_ruff_format(tmp_path: Path) -> None:
    """The README's developer set-up: `pre-commit install`, then a commit is checked by ruff."""
    if not shutil.which("pre-commit", path=str(Path(sys.executable).parent)):
        pytest.skip("pre-commit is not installed (make setup-dev)")
    repo = project_copy(tmp_path / "clone")
    (repo / "odd.py").write_text("x  =  [1,\n  2]\nimport os\n", encoding="utf-8")
    environment = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    ran = subprocess.run(
        [str(Path(sys.executable).parent / "pre-commit"), "run", "--files", "odd.py"],
        cwd=repo,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "ruff check" in ran.stdout and "ruff format" in ran.stdout
    assert "E402" in ran.stdout  # lint: the import below code
    assert (repo / "odd.py").read_text(encoding="utf-8").startswith("x = [1, 2]\n")  # formatted

"""The house rules (docs/architecture.md): small modules; every folder of code on a floor that the
import contract and the type checker both see; both tools clean. .ci/run runs the tools too; here
they run with the suite, so a merge that breaks them fails before it lands."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAX_LINES = 400
# Folders with Python in them that are no floor of the house.
NOT_FLOORS = {"tests", ".venv", "build"}


def code_folders() -> set[str]:
    """Top-level folders that hold Python files (outside the tests and the environment)."""
    return {
        folder.name
        for folder in ROOT.iterdir()
        if folder.is_dir()
        and folder.name not in NOT_FLOORS
        and not folder.name.startswith(".")
        and any(folder.rglob("*.py"))
    }


def test_no_module_over_the_line_limit() -> None:
    lines = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for folder in sorted(code_folders())
        for path in (ROOT / folder).rglob("*.py")
    }
    assert len(lines) > 50  # the walk found the packages
    too_long = {path: n for path, n in lines.items() if n > MAX_LINES}
    assert too_long == {}, f"split by concern: modules over {MAX_LINES} lines: {too_long}"


def test_every_code_folder_is_on_a_floor_and_type_checked() -> None:
    folders = code_folders()
    assert {"pscluster", "ps_server", "coordinator", "worker", "launcher"} <= folders
    linter = PYPROJECT["tool"]["importlinter"]
    # A new folder of code goes on a floor: name it in pyproject's [tool.importlinter] (root
    # packages and the layers contract) and [tool.mypy] files.
    assert set(linter["root_packages"]) == folders
    (layers,) = (c for c in linter["contracts"] if c["type"] == "layers")
    on_floors = {name.strip() for floor in layers["layers"] for name in floor.split("|")}
    assert on_floors == folders
    assert set(PYPROJECT["tool"]["mypy"]["files"]) == folders
    # Lazy imports and those under TYPE_CHECKING say what a module needs too.
    assert linter["exclude_type_checking_imports"] is False


def run_tool(name: str) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / name
    assert tool.exists(), f"{name} is not installed: pip install -c constraints.txt -e '.[test]'"
    return subprocess.run(
        [str(tool)], cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )


def test_imports_keep_to_the_floors() -> None:
    done = run_tool("lint-imports")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout


def test_the_type_checker_finds_nothing() -> None:
    done = run_tool("mypy")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Success: no issues found"), done.stdout

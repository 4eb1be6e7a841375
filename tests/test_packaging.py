"""Packaging, checked without building an image: the Dockerfile copies only paths that exist and
every package the project installs, and the ``pscluster`` console script resolves."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def copied_sources() -> list[str]:
    """The source paths of every COPY in the Dockerfile (the last word is the destination)."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY":
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def installed_top_packages() -> set[str]:
    found = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=found["include"])
    return {name.split(".")[0] for name in packages}


def test_dockerfile_copies_only_paths_that_exist() -> None:
    sources = copied_sources()
    assert "pyproject.toml" in sources
    missing = [source for source in sources if not (ROOT / source).exists()]
    assert missing == []


def test_dockerfile_copies_every_installed_package() -> None:
    packages = installed_top_packages()
    assert packages == {"pscluster", "ps_server", "worker", "coordinator", "launcher"}
    assert packages <= set(copied_sources())


def test_console_script_resolves() -> None:
    target = PYPROJECT["project"]["scripts"]["pscluster"]
    module_name, _, attr = target.partition(":")
    main = getattr(importlib.import_module(module_name), attr)
    assert callable(main)
    # The installed entry point (this checkout, installed with -e) names the same function.
    (script,) = entry_points(group="console_scripts", name="pscluster")
    assert script.value == target
    assert script.load() is main
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; from {module_name} import {attr}; sys.exit({attr}())",
            "--help",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "pscluster {up,coordinator,ps,worker}" in result.stdout


def test_dependency_ranges_start_at_the_tested_releases() -> None:
    """Every runtime dependency's range holds the release constraints.txt pins (what CI tests)
    and allows nothing older than that release's minor line: an untested older aiohttp, say,
    could lack a public API the data plane relies on."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = Version(version.strip())
    for text in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(text)
        pinned = pins[requirement.name.lower().replace("_", "-")]
        assert requirement.specifier.contains(pinned), (text, pinned)
        lowest = min(Version(s.version) for s in requirement.specifier if s.operator == ">=")
        assert (lowest.major, lowest.minor) == (pinned.major, pinned.minor), (text, pinned)

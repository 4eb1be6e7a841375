"""The coordinator runs BLAS on one thread unless told otherwise, set before NumPy loads (its
evaluation's threads spin-waited between products, taking CPU from workers and shards)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Both ways in: ``python -m coordinator`` and ``pscluster coordinator`` (compose, Kubernetes).
# The settings' --help is the first thing either loads NumPy for; by then the limit is set.
PROBE = """
import json, os, sys, contextlib, io
import {module} as entry
loaded_at_import = "numpy" in sys.modules
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    entry.main({argv})
print(json.dumps({{
    "loaded_at_import": loaded_at_import,
    "loaded": "numpy" in sys.modules,
    **{{name: os.environ.get(name) for name in
        ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}},
}}))
"""
ENTRIES = {
    "python -m coordinator": ("coordinator.__main__", ["--help"]),
    "pscluster coordinator": ("launcher.cli", ["coordinator", "--help"]),
}


def _probe(entry: str, env: dict[str, str]) -> dict[str, object]:
    module, argv = ENTRIES[entry]
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, argv=argv)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_one_blas_thread_by_default_set_before_numpy_loads(entry: str) -> None:
    assert _probe(entry, {}) == {
        "loaded_at_import": False,
        "loaded": True,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def test_an_operators_thread_count_is_kept() -> None:
    found = _probe("pscluster coordinator", {"OPENBLAS_NUM_THREADS": "3", "OMP_NUM_THREADS": "2"})
    assert (found["OPENBLAS_NUM_THREADS"], found["OMP_NUM_THREADS"]) == ("3", "2")
    assert found["MKL_NUM_THREADS"] == "1"

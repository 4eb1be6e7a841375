"""The one switch between NumPy and CuPy.

Model math takes its array module from its inputs (``array_module``), so the same code runs on
host and device arrays. Only the worker picks a backend (``get_xp``); the wire and the shards
always see NumPy (``to_numpy``).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

import numpy as np

BACKENDS = ("numpy", "cupy", "auto")


def _import_cupy() -> ModuleType | None:
    """CuPy if it imports, else None. Never cached: tests may monkeypatch sys.modules."""
    try:
        return importlib.import_module("cupy")
    except ImportError:
        return None


def _cupy_has_device(cp: ModuleType) -> bool:
    # A CuPy wheel imports fine on a machine without a driver or GPU; asking the runtime is the
    # only reliable test, and it raises (not returns 0) when the driver is missing.
    try:
        return int(cp.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


def get_xp(name: str) -> ModuleType:
    """The array module for "numpy", "cupy" or "auto" (cupy when a GPU is usable, else numpy)."""
    if name == "numpy":
        return np
    if name not in ("cupy", "auto"):
        raise ValueError(f"unknown array backend {name!r}; expected one of {', '.join(BACKENDS)}")
    cp = _import_cupy()
    usable = cp is not None and _cupy_has_device(cp)
    if usable:
        assert cp is not None
        return cp
    if name == "auto":
        return np
    if cp is None:
        raise RuntimeError(
            "backend 'cupy' requested but CuPy is not installed "
            "(pip install 'pscluster[gpu]'), or use backend 'numpy' or 'auto'"
        )
    raise RuntimeError(
        "backend 'cupy' requested but CuPy sees no CUDA device; use backend 'numpy' or 'auto'"
    )


def array_module(a: Any) -> ModuleType:
    """cupy for a CuPy array, numpy for anything else."""
    # A CuPy array can only exist once cupy is imported, so look in sys.modules instead of
    # importing it: importing CuPy is slow, and it is absent on CPU-only machines.
    cp = sys.modules.get("cupy")
    if cp is not None and isinstance(a, cp.ndarray):
        return cp
    return np


def to_numpy(a: Any) -> np.ndarray:
    """A host NumPy array: copies a CuPy array off the device, passes NumPy through."""
    if array_module(a) is not np:
        host: np.ndarray = a.get()
        return host
    return np.asarray(a)


def to_device(xp: ModuleType, a: Any) -> Any:
    """``a`` as an array of module ``xp`` (a host-to-device copy for CuPy, no copy for NumPy)."""
    return xp.asarray(a)

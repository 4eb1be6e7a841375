"""The dtypes that cross the wire, the cast to them, and the finiteness check of arrays in them
(part of the protocol: ``pscluster.protocol`` re-exports them)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

# Only plain numeric dtypes cross the wire: no object arrays, nothing that needs pickle.
# bfloat16 is ml_dtypes' (the one JAX and TensorFlow use): float32's exponent, 8 mantissa bits.
WIRE_DTYPES: dict[str, np.dtype] = {
    **{
        name: np.dtype(name)
        for name in ("float16", "float32", "float64", "int32", "int64", "uint8")
    },
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
# The bits of a 16-bit float's exponent: all ones means Inf or NaN. Keyed by dtype, not by its
# name: NumPy computes ``dtype.name`` in Python, microseconds per call.
_EXPONENT_BITS = {WIRE_DTYPES["float16"]: 0x7C00, WIRE_DTYPES["bfloat16"]: 0x7F80}
_WIRE_OF: dict[object, np.dtype] = {dtype: dtype for dtype in WIRE_DTYPES.values()}
_WIRE_OF.update(WIRE_DTYPES)


def wire_dtype(dtype: str | np.dtype) -> np.dtype:
    """The wire dtype ``dtype`` names (a name or a dtype); KeyError if it cannot cross."""
    found = _WIRE_OF.get(dtype)
    return found if found is not None else WIRE_DTYPES[np.dtype(dtype).name]


def all_finite(array: np.ndarray) -> bool:
    """No NaN or Inf, in one fast pass over the array's memory.

    float32/64: the dot product of the array with itself is finite exactly when every element is
    (NaN and Inf propagate), unless finite values are large enough to overflow it; only then is
    the exact elementwise test run. 16-bit floats: the largest exponent field, read as integers.
    (No floating-point warnings to silence: neither ``vdot`` nor ``isfinite`` raises them.)
    """
    dtype = array.dtype
    bits = _EXPONENT_BITS.get(dtype)
    if bits is not None:
        if array.size == 0:
            return True
        magnitudes = np.bitwise_and(array.reshape(-1).view(np.uint16), np.uint16(0x7FFF))
        return int(magnitudes.max()) < bits
    if dtype.kind != "f":
        return True
    flat = array.reshape(-1)
    if math.isfinite(float(np.vdot(flat, flat))):
        return True
    return bool(np.isfinite(array).all())


def to_wire(array: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """``array`` as ``dtype`` for sending (rounded to nearest for 16-bit; no copy if it is).

    float16 overflows to Inf beyond +-65504: a shard refuses that push as ``not_finite``.
    """
    array, wire = np.asarray(array), wire_dtype(dtype)
    if array.dtype == wire:
        return array
    with np.errstate(over="ignore"):
        return array.astype(wire)

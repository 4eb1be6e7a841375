"""Hashes of int64 ids, vectorised: which shard holds an id's row, a row's seeded initial
values, and the click log's hidden effects, each a pure function of (key, id).

A pure function of the id, not a draw from a stream: a row created first on one shard in one run
and last on another in another run gets the same values, and a process generates the values of
only the ids it needs. The mixer is splitmix64's finaliser (Steele et al. 2014), whose output
bits each depend on every input bit, so consecutive ids land on shards as evenly as random ones.
"""

from __future__ import annotations

import zlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# 2**-53: the top 53 bits of a hash as a float in [0, 1).
_UNIT = 1.0 / float(1 << 53)


def name_key(name: str) -> int:
    """A stable integer for a name (Python's ``hash`` of a str changes between processes)."""
    return zlib.crc32(name.encode())


def mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 values (a bijection; wraps modulo 2**64)."""
    z = np.asarray(values, dtype=np.uint64).copy()
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


_MASK = (1 << 64) - 1


def _mix_int(z: int) -> int:
    """``mix`` of one Python int (modulo 2**64): keys are mixed without NumPy calls."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK
    return z ^ (z >> 31)


def _mixed_key(key: int) -> np.uint64:
    return np.uint64(_mix_int((key * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & _MASK))


def _rounds(h: np.ndarray, keys: tuple[int, ...]) -> np.ndarray:
    """Each key folded in through its own round of the mixer, so (1, 2) and (2, 1) differ."""
    for key in keys:
        h = mix(h ^ _mixed_key(key))
    return h


def hash_ids(ids: np.ndarray, *keys: int) -> np.ndarray:
    """uint64 hashes of ``ids``, a different function for every tuple of ``keys``."""
    return mix(_rounds(np.asarray(ids).astype(np.uint64), keys) + _GOLDEN)


def unit_uniform(hashes: np.ndarray) -> np.ndarray:
    """float64 in (0, 1) from uint64 hashes (never exactly 0, so logs are safe)."""
    return ((hashes >> np.uint64(11)).astype(np.float64) + 0.5) * _UNIT


def hash_columns(ids: np.ndarray, columns: int, *keys: int) -> np.ndarray:
    """uint64 [len(ids), columns]: column c is ``hash_ids(ids, *keys, c)``. The rounds of
    ``keys`` are shared by the columns; the last two run for all columns in one pass."""
    shared = _rounds(np.asarray(ids).reshape(-1).astype(np.uint64), keys)
    last = np.array([_mixed_key(c) for c in range(columns)], dtype=np.uint64)
    return mix(mix(shared[:, None] ^ last[None, :]) + _GOLDEN)


def normal(ids: np.ndarray, dim: int, *keys: int) -> np.ndarray:
    """float64 [len(ids), dim] standard normals: Box-Muller on ``hash_ids(id, *keys, 2j)`` and
    ``hash_ids(id, *keys, 2j + 1)`` for column j, a function of (keys, j, id) alone."""
    u = unit_uniform(hash_columns(ids, 2 * dim, *keys))
    out: np.ndarray = np.sqrt(-2.0 * np.log(u[:, 0::2])) * np.cos(2.0 * np.pi * u[:, 1::2])
    return out


# The key of shard placement: its own function, apart from every initialiser's.
_PLACEMENT = name_key("shard placement")


def shard_of_ids(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """The shard (int64 in [0, num_shards)) that holds each id's row, shared by workers,
    shards and the coordinator's evaluator."""
    if num_shards < 1:
        raise ValueError("num_shards must be at least 1")
    return (hash_ids(ids, _PLACEMENT) % np.uint64(num_shards)).astype(np.int64)

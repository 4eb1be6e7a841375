"""Summing row gradients by id: a sync step's pushes folded into one gradient per row.

The pieces are concatenated in the order given (rank order) and each id's rows are summed in
that order (a stable sort keeps it), so the sum is the same bit for bit whatever order the
pushes arrived in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sum_rows(
    pieces: Sequence[tuple[np.ndarray, np.ndarray]], dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct ids sorted, float32 [n, dim] sums, int64 appearances) of (ids, rows) pieces,
    each with distinct ids."""
    if not pieces:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
    ids = np.concatenate([p[0] for p in pieces])
    rows = np.concatenate([np.asarray(p[1], dtype=np.float32) for p in pieces])
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    if len(pieces) == 1:
        return ordered, rows[order], np.ones(len(ids), dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    sums = np.add.reduceat(rows[order], starts, axis=0) if len(ids) else rows
    appearances = np.diff(np.append(starts, len(ids)))
    return ordered[starts], sums.astype(np.float32, copy=False), appearances

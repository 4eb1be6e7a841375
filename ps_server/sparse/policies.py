"""A table's policies as pure functions: which new ids are admitted, which rows are evicted.

Every choice depends on the ids, their counts and versions only, never on where a row happens
to be stored, so a table restored from a checkpoint (stored compactly) makes the same choices
as the one that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TablePolicy:
    """The policies of every table of a job (a table's own capacity comes from its spec)."""

    admit_after: int = 1  # a row is created by the push that names its id for the n-th time
    evict_after: int = 0  # rows untouched for this many versions are dropped (0: never)
    optimizer: str = "adagrad"  # sgd or adagrad, per row
    lr: float = 0.05
    # Ids counted towards admission, kept at most (then the counts start over): bounded memory.
    max_pending: int = 1 << 22

    def __post_init__(self) -> None:
        if self.admit_after < 1 or self.evict_after < 0 or self.lr <= 0:
            raise ValueError(f"bad table policy {self}")

    @property
    def admission(self) -> bool:
        return self.admit_after > 1


def admitted(counts: np.ndarray, admit_after: int) -> np.ndarray:
    """Which ids, having appeared in ``counts`` pushes so far, get a row now."""
    return np.asarray(counts) >= admit_after


def expired(touched: np.ndarray, version: int, evict_after: int) -> np.ndarray:
    """Rows last updated at ``touched`` that have gone ``evict_after`` versions untouched at
    ``version`` (none when the policy is off)."""
    if evict_after <= 0:
        return np.zeros(len(touched), dtype=bool)
    return np.asarray(touched) <= version - evict_after


def least_recent(touched: np.ndarray, ids: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` rows updated least recently (LRU), ties broken by the smaller
    id; O(n) (a partition), not a full sort of the table."""
    n = len(touched)
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if count >= n:
        return np.arange(n)
    cut = np.partition(touched, count - 1)[count - 1]
    below = np.flatnonzero(touched < cut)
    at_cut = np.flatnonzero(touched == cut)
    needed = count - len(below)
    if needed < len(at_cut):
        at_cut = at_cut[np.argsort(ids[at_cut], kind="stable")[:needed]]
    return np.concatenate([below, at_cut])

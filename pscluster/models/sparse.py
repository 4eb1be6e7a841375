"""Sparse embedding tables: what a model declares, and how rows travel to and from it.

A sparse model is a ``Model`` (``pscluster.models.base``) that also declares ``tables()``. Its
``params`` hold, besides the dense arrays, one ``Rows`` per table: the rows of just the ids its
batch names (``batch_ids``). Its gradients hold, besides the dense ones, one ``Rows`` per table:
the gradient of each of those rows, keyed by the same ids. The worker pulls and pushes only
those rows; the shards hold the tables and create a row the first time it is touched, with
values from the table's initialiser, a pure function of (seed, table, id).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard, runtime_checkable

import numpy as np

from pscluster.idhash import name_key, normal


@dataclass(frozen=True)
class NormalInit:
    """Rows drawn from N(0, std**2), each value a function of (seed, table, id, column)."""

    std: float = 0.01

    def __call__(self, seed: int, table: str, ids: np.ndarray, dim: int) -> np.ndarray:
        if self.std == 0.0:
            return np.zeros((len(ids), dim), dtype=np.float32)
        values = normal(ids, dim, seed, name_key(table)) * self.std
        return values.astype(np.float32)


ZEROS = NormalInit(0.0)


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: its rows are ``dim`` float32 values, keyed by int64 ids >= 0.

    The coordinator hands the specs to the shards (``to_json``), which build no model: so the
    initialiser is a declared distribution, N(0, std**2) (std 0: zeros), not code.
    """

    name: str
    dim: int
    init: NormalInit = NormalInit()
    # Rows a table keeps; beyond it the least recently touched go (LRU). None: unbounded.
    capacity: int | None = None

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"table {self.name!r}: dim must be at least 1, got {self.dim}")
        if self.capacity is not None and self.capacity < 1:
            raise ValueError(f"table {self.name!r}: capacity must be at least 1")
        if not (self.init.std >= 0.0):
            raise ValueError(f"table {self.name!r}: the initialiser's std must be >= 0")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "init_std": self.init.std,
            "capacity": self.capacity,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> TableSpec:
        capacity = data.get("capacity")
        return TableSpec(
            str(data["name"]),
            int(data["dim"]),
            NormalInit(float(data["init_std"])),
            None if capacity is None else int(capacity),
        )


@dataclass(frozen=True, eq=False)
class Rows:
    """Rows of one table: ``values[i]`` belongs to ``ids[i]``; ids unique, int64 >= 0."""

    ids: np.ndarray  # int64 [n]
    values: np.ndarray  # float32 [n, dim]

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Where each of ``ids`` (any shape; all present) is in ``self.ids``, sorted or not."""
        order = np.argsort(self.ids, kind="stable")
        found = np.searchsorted(self.ids, ids, sorter=order)
        return order[np.minimum(found, len(order) - 1)]


def unique_ids(x: np.ndarray) -> np.ndarray:
    """The distinct ids of a batch, sorted, int64 (what a worker pulls for it)."""
    return np.unique(np.asarray(x, dtype=np.int64))


@runtime_checkable
class SparseModel(Protocol):
    """A model with embedding tables (and the dense parameters of ``parameter_shapes``)."""

    def tables(self) -> dict[str, TableSpec]:
        """Name -> spec of every table, in a stable order."""
        ...

    def batch_ids(self, x: Any) -> dict[str, np.ndarray]:
        """Table -> the distinct int64 ids whose rows a batch ``x`` needs (sorted)."""
        ...

    def predict(self, params: Mapping[str, Any], x: Any) -> np.ndarray:
        """Scores of ``x`` (for AUC): probabilities of the positive class, float64 [n]."""
        ...


def is_sparse(model: object) -> TypeGuard[SparseModel]:
    return isinstance(model, SparseModel)

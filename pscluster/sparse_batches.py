"""The client's side of sparse tables (workers, and the coordinator's evaluation): which rows a
batch needs from which shard, the rows as the model takes them, and the row gradients each
shard gets.

A step's push to a shard carries the row gradients of the batch just computed (``@t/ids``,
``@t/rows``) and the ids of the next batch's rows on that shard (``@t/want``); the reply carries
those rows (``@t/rows``) with the dense parameters, so a step stays one exchange per shard. A
batch's rows are complete once every shard has answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pscluster.idhash import shard_of_ids
from pscluster.models.sparse import Rows, SparseModel, TableSpec
from pscluster.protocol import to_wire
from pscluster.sparse_wire import ids_key, rows_key, want_key


@dataclass
class BatchRows:
    """The rows of one batch: per table its distinct ids (sorted), the shard of each, and the
    rows as the shards' replies fill them in."""

    ids: dict[str, np.ndarray]
    shard_of: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    filled: set[int] = field(default_factory=set)  # shards whose rows are in

    def on_shard(self, table: str, shard: int) -> np.ndarray:
        mask: np.ndarray = self.shard_of[table] == shard
        return mask


class SparseBatches:
    def __init__(self, model: SparseModel, num_shards: int) -> None:
        self.model = model
        self.specs: dict[str, TableSpec] = model.tables()
        self.num_shards = num_shards
        self.bytes_pulled = 0
        self.bytes_pushed = 0

    def plan(self, x: Any) -> BatchRows:
        ids = self.model.batch_ids(x)
        return BatchRows(
            ids=dict(ids),
            shard_of={t: shard_of_ids(i, self.num_shards) for t, i in ids.items()},
            values={
                t: np.zeros((len(i), self.specs[t].dim), dtype=np.float32) for t, i in ids.items()
            },
        )

    def wants(self, batch: BatchRows | None, shard: int) -> dict[str, np.ndarray]:
        """A message's ``@t/want`` arrays: the batch's ids held by ``shard``."""
        if batch is None:
            return {}
        return {want_key(t): i[batch.on_shard(t, shard)] for t, i in batch.ids.items()}

    def absorb(self, batch: BatchRows, shard: int, arrays: Mapping[str, np.ndarray]) -> bool:
        """Take ``shard``'s rows from a reply's arrays; False if the reply carried none."""
        if not all(rows_key(t) in arrays for t in batch.ids):
            return False
        for table in batch.ids:
            rows = arrays[rows_key(table)]
            batch.values[table][batch.on_shard(table, shard)] = rows
            self.bytes_pulled += rows.nbytes
        batch.filled.add(shard)
        return True

    def complete(self, batch: BatchRows) -> bool:
        return len(batch.filled) == self.num_shards

    def params(self, batch: BatchRows, dense: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """What the model's ``loss_and_gradients`` takes: the dense arrays and a batch's rows."""
        return {**dense, **{t: Rows(batch.ids[t], batch.values[t]) for t in batch.ids}}

    def grads(
        self, batch: BatchRows, grads: Mapping[str, Any], shard: int, wire: str
    ) -> dict[str, np.ndarray]:
        """A push's ``@t/ids`` and ``@t/rows`` arrays for ``shard`` (rows in the wire dtype)."""
        arrays: dict[str, np.ndarray] = {}
        for table in batch.ids:
            rows = grads[table]
            assert isinstance(rows, Rows)
            same = rows.ids is batch.ids[table]
            where = batch.shard_of[table] if same else shard_of_ids(rows.ids, self.num_shards)
            mine = where == shard
            arrays[ids_key(table)] = rows.ids[mine]
            arrays[rows_key(table)] = to_wire(rows.values[mine], wire)
            self.bytes_pushed += arrays[ids_key(table)].nbytes + arrays[rows_key(table)].nbytes
        return arrays


def dense_grads(grads: Mapping[str, Any], specs: Mapping[str, TableSpec]) -> dict[str, Any]:
    return {name: g for name, g in grads.items() if name not in specs}

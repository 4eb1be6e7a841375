"""A shard's embedding tables: the sparse part of a push checked at the edge, a sync step's
row gradients held by rank and applied when the step closes, async ones applied at once, rows
read for a reply, and their share of a checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ps_server.sparse.aggregate import sum_rows
from ps_server.sparse.policies import TablePolicy
from ps_server.sparse.table import SparseTable
from pscluster.idhash import shard_of_ids
from pscluster.models.sparse import TableSpec
from pscluster.protocol import WIRE_DTYPES, ErrorCode, ProtocolError, all_finite
from pscluster.sparse_wire import check_ids, is_sparse_key, rows_key, split_key

CHECKPOINT_PREFIX = "sparse/"


@dataclass(frozen=True)
class SparsePush:
    """The sparse part of one message, checked: row gradients and the ids wanted back."""

    grads: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    wants: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(len(ids) for ids, _ in self.grads.values())


def dense_part(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: a for key, a in arrays.items() if not is_sparse_key(key)}


class ShardTables:
    def __init__(
        self,
        specs: Mapping[str, TableSpec],
        *,
        seed: int,
        policy: TablePolicy,
        shard: int,
        num_shards: int,
        wire_dtype: str = "float32",
    ) -> None:
        self._seed, self._policy = seed, policy
        self.tables = {name: SparseTable(spec, seed, policy) for name, spec in specs.items()}
        self.shard, self.num_shards = shard, num_shards
        self._wire = WIRE_DTYPES[wire_dtype]
        # sync: each rank's row gradients of the step being gathered.
        self.held: dict[int, SparsePush] = {}
        self.rows_pushed = 0
        self.rows_pulled = 0
        self.bytes_pushed = 0  # ids and row gradients received
        self.bytes_pulled = 0  # rows sent

    # --- the edge -------------------------------------------------------------------------------

    def parse(self, arrays: Mapping[str, np.ndarray]) -> SparsePush:
        """The sparse arrays of a message, checked; refused with an ErrorCode otherwise."""
        parts: dict[str, dict[str, np.ndarray]] = {}
        for key, array in arrays.items():
            if is_sparse_key(key):
                table, kind = split_key(key)
                if table not in self.tables:
                    raise ProtocolError(ErrorCode.UNKNOWN_PARAMETER, f"no table {table!r}")
                parts.setdefault(table, {})[kind] = array
        push = SparsePush()
        for table, kinds in parts.items():
            if "want" in kinds:
                push.wants[table] = self._owned(table, check_ids(table, kinds["want"]))
            if ("ids" in kinds) != ("rows" in kinds):
                raise ProtocolError(
                    ErrorCode.MISSING_PARAMETER, f"table {table!r}: ids and rows go together"
                )
            if "ids" in kinds:
                ids = self._owned(table, check_ids(table, kinds["ids"]))
                push.grads[table] = (ids, self._check_rows(table, kinds["rows"], len(ids)))
        return push

    def _owned(self, table: str, ids: np.ndarray) -> np.ndarray:
        if self.num_shards > 1 and len(ids):
            others = shard_of_ids(ids, self.num_shards) != self.shard
            if others.any():
                raise ProtocolError(
                    ErrorCode.WRONG_SHARD,
                    f"table {table!r}: id {int(ids[others][0])} is not on shard {self.shard}",
                )
        return ids

    def _check_rows(self, table: str, rows: np.ndarray, n: int) -> np.ndarray:
        dim = self.tables[table].spec.dim
        if rows.dtype not in (np.dtype(np.float32), self._wire):
            raise ProtocolError(
                ErrorCode.BAD_DTYPE, f"table {table!r}: rows are {rows.dtype}, not float32"
            )
        if rows.shape != (n, dim):
            raise ProtocolError(
                ErrorCode.BAD_SHAPE, f"table {table!r}: rows {rows.shape}, ids need {(n, dim)}"
            )
        if not all_finite(rows):
            raise ProtocolError(ErrorCode.NOT_FINITE, f"table {table!r}: rows hold NaN or Inf")
        return rows

    # --- updates --------------------------------------------------------------------------------

    def hold(self, rank: int, push: SparsePush) -> None:
        """sync: keep a rank's row gradients (copies: the body's buffer goes back to the pool)
        until the step closes."""
        kept = {
            t: (ids.copy(), np.array(r, dtype=np.float32)) for t, (ids, r) in push.grads.items()
        }
        self.held[rank] = SparsePush(kept)
        self._count_push(push)

    def _count_push(self, push: SparsePush) -> None:
        self.rows_pushed += push.rows
        self.bytes_pushed += sum(ids.nbytes + rows.nbytes for ids, rows in push.grads.values())

    def close_step(self, scale: float, version: int) -> None:
        """sync: each row's gradients summed over the ranks that sent it, in rank order, times
        ``scale`` (1 / the step's gradients, as for dense), applied as ``version``."""
        ranks = sorted(self.held)
        for name, table in self.tables.items():
            pieces = [self.held[r].grads[name] for r in ranks if name in self.held[r].grads]
            ids, sums, appearances = sum_rows(pieces, table.spec.dim)
            if len(ids):
                sums *= np.float32(scale)
                table.apply(ids, sums, appearances, version)
        self.held.clear()

    def apply_now(self, push: SparsePush, scale: float, version: int) -> None:
        """async and ssp: one push's rows applied as they arrive."""
        self._count_push(push)
        for name, (ids, rows) in push.grads.items():
            grads = np.asarray(rows, dtype=np.float32) * np.float32(scale)
            self.tables[name].apply(ids, grads, np.ones(len(ids), dtype=np.int64), version)

    # --- reads ----------------------------------------------------------------------------------

    def rows_for(self, wants: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The reply's arrays: ``@t/rows`` for each table's wanted ids, in their order."""
        out = {rows_key(t): self.tables[t].read(ids) for t, ids in wants.items()}
        self.rows_pulled += sum(len(ids) for ids in wants.values())
        self.bytes_pulled += sum(rows.nbytes for rows in out.values())
        return out

    # --- checkpoints and status -----------------------------------------------------------------

    def reset(self) -> None:
        """Back to version 0: every table empty (each row its initial values again), no step
        held, the counters at zero. They are the history of the tables' version, as a restore
        from a checkpoint takes them back to its version's, so a run that rewinds ends with the
        counts of the run that did not (a Prometheus scrape sees a counter reset)."""
        for name, table in self.tables.items():
            self.tables[name] = SparseTable(table.spec, self._seed, self._policy)
        self.held.clear()

    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        for name, table in self.tables.items():
            for key, a in table.state_arrays().items():
                arrays[f"{CHECKPOINT_PREFIX}{name}/{key}"] = a
        for rank, push in self.held.items():
            for name, (ids, rows) in push.grads.items():
                arrays[f"{CHECKPOINT_PREFIX}held/{rank}/{name}/ids"] = ids
                arrays[f"{CHECKPOINT_PREFIX}held/{rank}/{name}/rows"] = rows
        return arrays

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        held: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        per_table: dict[str, dict[str, np.ndarray]] = {name: {} for name in self.tables}
        for key, a in arrays.items():
            if not key.startswith(CHECKPOINT_PREFIX):
                continue
            path = key[len(CHECKPOINT_PREFIX) :].split("/")
            if path[0] == "held":
                rank, name, kind = int(path[1]), path[2], path[3]
                ids, rows = held.setdefault(rank, {}).get(name, (np.zeros(0), np.zeros(0)))
                pair = (np.array(a), rows) if kind == "ids" else (ids, np.array(a))
                held[rank][name] = pair
            else:
                per_table[path[0]]["/".join(path[1:])] = a
        for name, table in self.tables.items():
            if per_table[name]:
                table.load_state_arrays(per_table[name])
        self.held = {rank: SparsePush(grads) for rank, grads in held.items()}

    def summary(self) -> dict[str, Any]:
        return {
            name: {"rows": table.rows, "bytes": table.nbytes, **table.counts.as_dict()}
            for name, table in self.tables.items()
        }

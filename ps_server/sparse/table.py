"""One embedding table on one shard: rows keyed by id, created on first touch, with admission,
eviction and a per-row optimizer.

Rows live in one growable float32 array, ``values[slot]``; ``IdIndex`` maps an id to its slot,
and a freed slot is reused by the next new row. Reading never changes the table (a pull of an id
without a row answers its initial values, or with admission on the default row, zeros), so
pulls, evaluation and retries cannot change what training computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ps_server.sparse.index import IdIndex
from ps_server.sparse.optimizers import build_row_optimizer
from ps_server.sparse.policies import TablePolicy, admitted, expired, least_recent
from pscluster.models.sparse import TableSpec

MIN_ROWS = 1024


@dataclass
class TableCounts:
    """Since the table began (checkpoints carry them): rows created, and why rows went or
    gradients were dropped."""

    admitted: int = 0
    evicted_expired: int = 0
    evicted_capacity: int = 0
    dropped_rows: int = 0  # gradient rows of ids not admitted yet

    def as_dict(self) -> dict[str, int]:
        return {
            "admitted": self.admitted,
            "evicted_expired": self.evicted_expired,
            "evicted_capacity": self.evicted_capacity,
            "dropped_rows": self.dropped_rows,
        }


@dataclass(frozen=True)
class _Created:
    admitted: np.ndarray  # bool per new id
    slots: np.ndarray  # the slots of the admitted ones


class SparseTable:
    def __init__(self, spec: TableSpec, seed: int, policy: TablePolicy) -> None:
        self.spec = spec
        self.seed = seed
        self.policy = policy
        self.optimizer = build_row_optimizer(policy.optimizer, policy.lr)
        self.index = IdIndex()
        self.values = np.zeros((MIN_ROWS, spec.dim), dtype=np.float32)
        self.state = np.zeros_like(self.values) if self.optimizer.has_state else None
        self.slot_ids = np.full(MIN_ROWS, -1, dtype=np.int64)  # the id in each slot, or -1
        self.touched = np.zeros(MIN_ROWS, dtype=np.int64)  # version of each row's last update
        self._free = np.zeros(0, dtype=np.int64)  # slots freed by eviction
        self._top = 0  # slots below this have been used
        # Admission: how many pushes named each id that has no row yet.
        self.pending = IdIndex()
        self._pending_counts = np.zeros(MIN_ROWS, dtype=np.int64)
        self._pending_next = 0
        self.counts = TableCounts()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rows(self) -> int:
        return self.index.size

    @property
    def nbytes(self) -> int:
        """Memory the table holds: rows, optimizer state, index and bookkeeping."""
        state = 0 if self.state is None else self.state.nbytes
        arrays = self.values.nbytes + state + self.slot_ids.nbytes + self.touched.nbytes
        return arrays + self.index.nbytes + self.pending.nbytes + self._pending_counts.nbytes

    # --- reading --------------------------------------------------------------------------------

    def read(self, ids: np.ndarray) -> np.ndarray:
        """float32 [len(ids), dim]: each id's row; its initial values if it has none (zeros
        while admission is on and it has not been admitted)."""
        slots = self.index.lookup(ids)
        present = slots >= 0
        out = np.empty((len(ids), self.spec.dim), dtype=np.float32)
        out[present] = self.values[slots[present]]
        absent = ~present
        if absent.any():
            if self.policy.admission:
                out[absent] = 0.0
            else:
                out[absent] = self.spec.init(self.seed, self.name, ids[absent], self.spec.dim)
        return out

    # --- writing --------------------------------------------------------------------------------

    def apply(
        self, ids: np.ndarray, grads: np.ndarray, appearances: np.ndarray, version: int
    ) -> None:
        """One update of the rows ``ids`` (distinct) by ``grads`` (scaled already), as part of
        the update that makes ``version``. ``appearances``: in how many pushes each id came (a
        sync step sums several), for admission. Then the eviction policies run."""
        slots = self.index.lookup(ids)
        new = slots < 0
        if new.any():
            created = self._admit(ids[new], appearances[new])
            slots[np.flatnonzero(new)[created.admitted]] = created.slots
            self.counts.dropped_rows += int((~created.admitted).sum())
        keep = slots >= 0
        slots, grads = slots[keep], grads[keep]
        self.optimizer.update(self.values, self.state, slots, grads)
        self.touched[slots] = version
        self._evict(version)

    def _admit(self, ids: np.ndarray, appearances: np.ndarray) -> _Created:
        if not self.policy.admission:
            return _Created(np.ones(len(ids), dtype=bool), self._create(ids))
        at = self.pending.lookup(ids)
        seen = at >= 0
        counts = np.asarray(appearances, dtype=np.int64).copy()
        counts[seen] += self._pending_counts[at[seen]]
        ok = admitted(counts, self.policy.admit_after)
        # The admitted leave the pending counts; the others' counts are stored.
        if (ok & seen).any():
            self.pending.delete(ids[ok & seen])
        self._pending_counts[at[seen & ~ok]] = counts[seen & ~ok]
        fresh = ~seen & ~ok
        if fresh.any():
            self._count_pending(ids[fresh], counts[fresh])
        return _Created(ok, self._create(ids[ok]))

    def _count_pending(self, ids: np.ndarray, counts: np.ndarray) -> None:
        """Store the counts of ids seen for the first time (not admitted yet)."""
        if self.pending.size + len(ids) > self.policy.max_pending:
            # Bounded memory: the counts start over (ids not seen since lose their progress).
            self.pending = IdIndex()
            self._pending_next = 0
        if self._pending_next + len(ids) > len(self._pending_counts):
            # Rebuilt compactly: positions of admitted ids are reused only from here.
            live_ids, live_at = self.pending.items()
            kept = self._pending_counts[live_at]
            need = len(live_ids) + len(ids)
            self._pending_counts = np.zeros(max(MIN_ROWS, 2 * need), dtype=np.int64)
            self._pending_counts[: len(live_ids)] = kept
            self.pending = IdIndex(4 * need)
            self.pending.insert(live_ids, np.arange(len(live_ids)))
            self._pending_next = len(live_ids)
        positions = np.arange(self._pending_next, self._pending_next + len(ids))
        self._pending_counts[positions] = counts
        self.pending.insert(ids, positions)
        self._pending_next += len(ids)

    def _create(self, ids: np.ndarray) -> np.ndarray:
        """New rows for ``ids`` (distinct, without rows), initialised; returns their slots."""
        n = len(ids)
        reused = self._free[:n]
        self._free = self._free[n:]
        fresh = n - len(reused)
        if self._top + fresh > len(self.values):
            self._grow(self._top + fresh)
        slots = np.concatenate([reused, np.arange(self._top, self._top + fresh)])
        self._top += fresh
        self.values[slots] = self.spec.init(self.seed, self.name, ids, self.spec.dim)
        if self.state is not None:
            self.state[slots] = 0.0
        self.slot_ids[slots] = ids
        self.index.insert(ids, slots)
        self.counts.admitted += n
        return slots

    def _grow(self, rows: int) -> None:
        size = len(self.values)
        while size < rows:
            size *= 2

        def grown(a: np.ndarray, fill: float) -> np.ndarray:
            out = np.full((size, *a.shape[1:]), fill, dtype=a.dtype)
            out[: len(a)] = a
            return out

        self.values = grown(self.values, 0.0)
        if self.state is not None:
            self.state = grown(self.state, 0.0)
        self.slot_ids = grown(self.slot_ids, -1)
        self.touched = grown(self.touched, 0)

    def _evict(self, version: int) -> None:
        capacity = self.spec.capacity
        if not self.policy.evict_after and (capacity is None or self.rows <= capacity):
            return
        live = np.flatnonzero(self.slot_ids[: self._top] >= 0)
        old = live[expired(self.touched[live], version, self.policy.evict_after)]
        if len(old):
            self._drop(old)
            self.counts.evicted_expired += len(old)
        if capacity is not None and self.rows > capacity:
            live = np.flatnonzero(self.slot_ids[: self._top] >= 0)
            victims = live[
                least_recent(self.touched[live], self.slot_ids[live], self.rows - capacity)
            ]
            self._drop(victims)
            self.counts.evicted_capacity += len(victims)

    def _drop(self, slots: np.ndarray) -> None:
        self.index.delete(self.slot_ids[slots])
        self.slot_ids[slots] = -1
        # Freed slots are reused lowest first: where a row lands depends on history alone.
        self._free = np.sort(np.concatenate([self._free, slots]))

    # --- checkpoints ----------------------------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to resume exactly, rows in id order (compact: no free slots)."""
        live = np.flatnonzero(self.slot_ids[: self._top] >= 0)
        order = live[np.argsort(self.slot_ids[live], kind="stable")]
        pending_ids, at = self.pending.items()
        # In id order too (the index's own order depends on its history): equal tables, equal
        # checkpoints, whatever led to them.
        by_id = np.argsort(pending_ids, kind="stable")
        pending_ids, at = pending_ids[by_id], at[by_id]
        arrays = {
            "ids": self.slot_ids[order],
            "values": self.values[order],
            "touched": self.touched[order],
            "pending_ids": pending_ids,
            "pending_counts": self._pending_counts[at],
            # The counters too, so a restored table's admitted and evicted go on from here.
            "counts": np.array(list(self.counts.as_dict().values()), dtype=np.int64),
        }
        if self.state is not None:
            arrays["state"] = self.state[order]
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        fresh = SparseTable(self.spec, self.seed, self.policy)
        ids = np.asarray(arrays["ids"], dtype=np.int64)
        n = len(ids)
        fresh._grow(max(n, 1))
        fresh.values[:n] = arrays["values"]
        if fresh.state is not None:
            fresh.state[:n] = arrays["state"]
        fresh.slot_ids[:n] = ids
        fresh.touched[:n] = arrays["touched"]
        fresh._top = n
        fresh.index = IdIndex(4 * n)
        fresh.index.insert(ids, np.arange(n))
        if "counts" in arrays:
            fresh.counts = TableCounts(*(int(c) for c in arrays["counts"]))
        pending_ids = np.asarray(arrays["pending_ids"], dtype=np.int64)
        if len(pending_ids):
            fresh._count_pending(pending_ids, np.asarray(arrays["pending_counts"]))
        self.__dict__.update(fresh.__dict__)

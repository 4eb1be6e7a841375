"""id -> slot: a hash table of int64 ids in NumPy arrays, looked up a whole batch at a time.

Open addressing with linear probing (Knuth 6.4): ``keys[p]`` holds the id stored at position p
(or EMPTY, or TOMBSTONE where one was deleted), ``slots[p]`` the row it maps to. Every operation
runs one vectorised probe round for all the ids still looking, so a batch of 1e5 ids costs a few
NumPy passes, not 1e5 Python dict operations; and a row costs 12 bytes per position at a load
of at most one half, against about 100 for a dict of Python ints.
"""

from __future__ import annotations

import numpy as np

from pscluster.idhash import mix

EMPTY = -1
TOMBSTONE = -2
MIN_POSITIONS = 1024
MAX_LOAD = 0.5  # live ids and tombstones over positions; probes stay short below it


class IdIndex:
    def __init__(self, positions: int = MIN_POSITIONS) -> None:
        self._allocate(max(MIN_POSITIONS, 1 << (positions - 1).bit_length()))
        self.size = 0  # live ids

    def _allocate(self, positions: int) -> None:
        self._keys = np.full(positions, EMPTY, dtype=np.int64)
        self._slots = np.zeros(positions, dtype=np.int32)
        self._mask = positions - 1
        self._used = 0  # positions not EMPTY: live ids and tombstones

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._slots.nbytes

    def _home(self, ids: np.ndarray) -> np.ndarray:
        return (mix(ids.view(np.uint64)) & np.uint64(self._mask)).astype(np.int64)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Where each id is stored, or -1."""
        found = np.full(len(ids), -1, dtype=np.int64)
        active = np.arange(len(ids))
        pos = self._home(ids)
        while active.size:
            keys = self._keys[pos]
            hit = keys == ids[active]
            found[active[hit]] = pos[hit]
            going_on = ~hit & (keys != EMPTY)
            active, pos = active[going_on], (pos[going_on] + 1) & self._mask
        return found

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """int64 slot of each id (int64 >= 0), -1 where absent."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        pos = self._positions(ids)
        slots = np.full(len(ids), -1, dtype=np.int64)
        present = pos >= 0
        slots[present] = self._slots[pos[present]]
        return slots

    def insert(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Map ``ids`` (distinct, none present) to ``slots``."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if (self._used + len(ids)) > MAX_LOAD * len(self._keys):
            self._rehash(self.size + len(ids))
        self._place(ids, np.asarray(slots, dtype=np.int32))
        self.size += len(ids)

    def _place(self, ids: np.ndarray, slots: np.ndarray) -> None:
        active = np.arange(len(ids))
        pos = self._home(ids)
        while active.size:
            keys = self._keys[pos]
            free = keys < 0  # EMPTY or TOMBSTONE
            claim, at = active[free], pos[free]
            # Several ids may claim one free position: the last write wins, and each checks.
            self._keys[at] = ids[claim]
            won = self._keys[at] == ids[claim]
            self._slots[at[won]] = slots[claim[won]]
            self._used += int((keys[free][won] == EMPTY).sum())
            going_on = np.concatenate([active[~free], claim[~won]])
            pos = (np.concatenate([pos[~free], at[~won]]) + 1) & self._mask
            active = going_on

    def delete(self, ids: np.ndarray) -> None:
        """Forget ``ids`` (all present)."""
        pos = self._positions(np.ascontiguousarray(ids, dtype=np.int64))
        if (pos < 0).any():
            raise KeyError("deleting ids that are not in the index")
        self._keys[pos] = TOMBSTONE
        self.size -= len(pos)

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, slots) of every live id, in storage order."""
        live = self._keys >= 0
        return self._keys[live].copy(), self._slots[live].astype(np.int64)

    def _rehash(self, live_after: int) -> None:
        ids, slots = self.items()
        positions = MIN_POSITIONS
        while live_after > MAX_LOAD * positions / 2:  # a quarter full after: room to grow
            positions *= 2
        self._allocate(positions)
        self._place(ids, slots.astype(np.int32))

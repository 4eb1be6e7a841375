"""Checkpoint bodies: a consistent copy of the state taken between two updates, and restoring
from one.

A periodic checkpoint is taken at exactly its version (``_checkpoint_due``, called by the update
that reaches it, under the lock): every shard's checkpoint of version v then holds the same
state, an empty step v, so in sync mode all shards can resume from one version (the consistent
cut). The copy is made at once; encoding and writing happen later, off the lock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from ps_server.checkpoint import Checkpoint, encode_checkpoint
from ps_server.state.core import OwnedGradients
from ps_server.state.sparse import SparseRows


class Checkpoints(SparseRows):
    async def checkpoint_body(self) -> tuple[int, bytes]:
        """A consistent snapshot, serialized: parameters, optimizer state, version, and the sync
        step being gathered (its running sum and who is in it), taken between two updates."""
        return await self._locked(self._checkpoint_body)

    async def _checkpoint_body(self) -> tuple[int, bytes]:
        header, arrays = self._contents()
        # Encoding copies the arrays, so the file can be written after the lock is released.
        return self.version, await asyncio.to_thread(encode_checkpoint, header, arrays)

    def _contents(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The checkpoint's header and arrays (the state's own, not copies)."""
        arrays = {
            **{f"param/{key}": p for key, p in self.params.items()},
            **{f"opt/{key}": a for key, a in self.optimizer.state().items()},
        }
        if self._summed:
            arrays.update({f"sum/{key}": a for key, a in self._sum.items()})
        for rank, grads in self._held.items():
            arrays.update({f"held/{rank}/{key}": g for key, g in grads.items()})
        if self.tables is not None:
            arrays.update(self.tables.state_arrays())
        header = {
            "shard": self.index,
            "version": self.version,
            "epoch": self.epoch,
            "contributors": sorted(self._contributors),
            # How far the rank-ordered fold got (ps_server.fold_order).
            "summed": self._summed,
            "last_folded": self._last_folded,
            "held": sorted(self._held),
        }
        return header, arrays

    def _checkpoint_due(self) -> None:
        header, arrays = self._contents()
        copies = {key: np.array(a, copy=True) for key, a in arrays.items()}
        self.captured.append((self.version, header, copies))
        self.checkpoint_due.set()

    async def next_captured(self) -> tuple[int, bytes] | None:
        """The oldest checkpoint taken at its version and not yet written, encoded off the event
        loop; None when there is none."""
        if not self.captured:
            return None
        version, header, arrays = self.captured.popleft()
        return version, await asyncio.to_thread(encode_checkpoint, header, arrays)

    def restore(self, checkpoint: Checkpoint) -> None:
        arrays = checkpoint.arrays
        # Fresh arrays: the current ones may be a reply frame's.
        self.params = {
            key: arrays[f"param/{key}"].astype(p.dtype) for key, p in self.params.items()
        }
        self.optimizer.load_state(
            {key.removeprefix("opt/"): a for key, a in arrays.items() if key.startswith("opt/")}
        )
        header = checkpoint.header
        self._contributors = set(header.get("contributors", []))
        # A checkpoint from before the rank-ordered fold has a sum whenever it has contributors.
        self._summed = bool(header.get("summed", self._contributors))
        self._last_folded = header.get("last_folded")
        if self._summed:
            for key, total in self._sum.items():
                np.copyto(total, arrays[f"sum/{key}"])
        self._held = {
            rank: OwnedGradients({key: arrays[f"held/{rank}/{key}"].copy() for key in self._sum})
            for rank in header.get("held", [])
        }
        if self.tables is not None:
            self.tables.load_state_arrays(arrays)
        self.version = checkpoint.version
        self.epoch = max(self.epoch, int(header.get("epoch", 0)))
        self.restored_from = checkpoint.version
        self.metrics.version.set(self.version)
        self._snapshot = None

    def reset(self, params: dict[str, np.ndarray]) -> None:
        """Back to version 0: the seed's parameters (which every shard can rebuild, so version
        0 is in every cut), a fresh optimizer and empty tables."""
        self.params = params
        self.optimizer = self._new_optimizer(params)
        self.reset_tables()
        self._contributors = set()
        self._summed = False
        self._last_folded = None
        self._held = {}
        self.version = 0
        self.metrics.version.set(0)
        self._snapshot = None

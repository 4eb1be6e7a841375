"""Checkpoint bodies: a consistent copy of the state taken between two updates, and restoring
from one."""

from __future__ import annotations

import asyncio

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
            "contributors": sorted(self._contributors),
            # How far the rank-ordered fold got (ps_server.fold_order).
            "summed": self._summed,
            "last_folded": self._last_folded,
            "held": sorted(self._held),
        }
        # Encoding copies the arrays, so the file can be written after the lock is released.
        return self.version, await asyncio.to_thread(encode_checkpoint, header, arrays)

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
        self.restored_from = checkpoint.version
        self.metrics.version.set(self.version)
        self._snapshot = None

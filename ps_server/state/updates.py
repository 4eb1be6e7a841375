"""Writing the next version: the optimizer's pass over the parameters, which also fills the new
version's reply frame, and what follows it (version, long-polls, checkpoint due); an async push
is applied this way at once, as its own version."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ps_server.optimizers import apply
from ps_server.snapshot import Snapshot
from ps_server.sparse.tables import SparsePush
from ps_server.state.sparse import NO_ROWS, SparseRows


class Updates(SparseRows):
    async def _update(
        self, scale: float, incoming: Mapping[str, np.ndarray] | None, *, first: bool
    ) -> Snapshot:
        """Apply ``scale`` times the running sum, with ``incoming`` folded in (as the sum when
        ``first``, else added to it), and return the new version's reply frame, written in the
        same pass over memory.

        With float32 on the wire the parameters live in their version's frame. When no reply
        holds the current frame any more (the usual case: replies are sent long before the
        next step's gradients are in) the update runs in place and the frame only gets a new
        header. Otherwise it writes the new parameters into a new frame, out of place, and the
        replies still being sent keep the old one. A 16-bit frame is written by the same rule
        from float32 parameters kept apart.
        """
        fold = (self._adopt(incoming) if first else incoming) if incoming is not None else None
        snapshot = self._snapshot
        if snapshot is None or snapshot.lent:
            snapshot = self._new_snapshot(self.version + 1)
        # From here until the update is done nobody may borrow the frame being overwritten:
        # callers of encoded_params wait for the lock, then get the new version.
        self._snapshot = None
        targets = snapshot.arrays
        in_frame = all(t.dtype == self.params[key].dtype for key, t in targets.items())
        in_place = in_frame and all(self.params[key] is t for key, t in targets.items())
        await self._math(
            lambda: apply(
                self.optimizer,
                self.params,
                self._sum,
                scale,
                fold=fold or None,
                fold_adds=not first,
                out=targets if in_frame and not in_place else None,
                snapshot=None if in_frame else targets,
            )
        )
        if in_frame:
            self.params = targets
        snapshot.reheader(self._header(self.version + 1))
        return snapshot

    def _advance(self, snapshot: Snapshot) -> None:
        self.version += 1
        self._snapshot = snapshot
        self.metrics.version.set(self.version)
        every = self.job.checkpoint_every
        if every and self.version % every == 0:
            self._checkpoint_due()
        # Wake every long-poll waiting on the old version.
        self._wake_version_waiters()

    async def _apply_async(
        self, scale: float, grads: Mapping[str, np.ndarray], sparse: SparsePush = NO_ROWS
    ) -> None:
        """One accepted async gradient (and its rows), applied at once as its own version."""
        if self.job.lr_divide_by_workers:
            scale /= self.job.workers
        snapshot = await self._update(scale, grads, first=True)
        self._apply_rows_now(sparse, scale)
        self._advance(snapshot)

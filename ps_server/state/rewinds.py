"""Sync recovery on a shard: rewinding to the consistent cut the coordinator names.

When a shard restarts in sync mode it does not resume from its own newest checkpoint, which the
other shards may not have reached or may be past: the model would become a mix of versions. It
serves nobody (``recovering``) and offers the versions it holds on disk; the coordinator takes the
newest version every shard holds (``coordinator.recovery``) and tells every shard to rewind to it,
as a new epoch. A shard past the cut restores its checkpoint of that version (the step it was
gathering is dropped: its workers will push again); one at the cut keeps its step as it is (the
gradients in it were computed from the cut's parameters). Held replies are answered at once with
the cut's parameters, and a push for a later version is refused as ``future_version`` with them,
so every worker rewinds too and, drawing its batch by version, computes the same gradients again.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ps_server.checkpoint import Checkpoint
from ps_server.state.checkpoints import Checkpoints
from ps_server.state.gathering import SyncGathering


class Rewinds(SyncGathering, Checkpoints):
    async def rewind(
        self,
        *,
        version: int,
        epoch: int,
        members: Mapping[str, int] | None,
        checkpoint: Checkpoint | None,
        initial: dict[str, np.ndarray] | None,
    ) -> bool:
        """Rewind to ``version`` as ``epoch`` (from ``checkpoint``, or ``initial`` for version
        0); False when this epoch was applied already."""

        async def work() -> bool:
            if epoch <= self.epoch and not self.recovering:
                return False
            # A shard that goes back (not one that starts the job at version 0).
            moved = checkpoint is not None or self.version != version
            if self.recovering or self.version != version:
                restored_from = self.restored_from
                if checkpoint is not None:
                    self.restore(checkpoint)
                elif initial is not None:
                    self.reset(initial)
                if not self.recovering:
                    self.restored_from = restored_from  # a live shard did not restart
                if self._deadline_timer is not None:
                    self._deadline_timer.cancel()
                    self._deadline_timer = None
            self.epoch = epoch
            if self._snapshot is not None:
                # Kept as it was: the same parameters, now under the new epoch.
                self._snapshot.reheader(self._header(self.version))
            if moved:
                self.rewinds += 1
                self.rewound_to = version
            self.recovering = False
            if members is not None:
                # Before any push is judged: the rank order of the fold needs the membership.
                await self._set_members(members)
            # Held long-polls and push replies return now, with the cut's parameters.
            self._wake_version_waiters()
            return True

        return await self._locked(work)

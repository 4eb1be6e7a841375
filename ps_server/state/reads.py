"""What others read: the current version's parameters as a reply frame, encoded once per version
and lent to each caller; long-polls waiting for a newer version; the status summary."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np

from ps_server.state.core import wake
from ps_server.state.sparse import SparseRows
from pscluster.messages import Reply
from pscluster.protocol import EncodedFrame, frame_buffers


class Reads(SparseRows):
    async def encoded_params(self, fields: Mapping[str, Any] | None = None) -> EncodedFrame:
        """The parameters of the current version as a frame, encoded once per version and lent
        to each caller (see ``Snapshot``), under the version's header plus ``fields``: hold it
        only as long as it is being sent."""
        snapshot = self._snapshot
        if snapshot is not None:
            # Checked and lent in one go, with no await between: an update that overwrites the
            # frame in place first takes it away from here, and only when nobody holds it.
            return snapshot.lend(fields)
        # Made under the lock, between two updates: one made while an update runs on a thread
        # would mix two versions.
        return await self._locked(lambda: self._encode_current(fields))

    async def _encode_current(self, fields: Mapping[str, Any] | None) -> EncodedFrame:
        # Every update writes its version's frame as it goes; this is for the versions no update
        # made here (the first, one restored from a checkpoint).
        if self._snapshot is None:
            snapshot = self._new_snapshot(self.version)
            await self._math(lambda: snapshot.fill(self.params))
            self._snapshot = snapshot
        return self._snapshot.lend(fields)

    async def reply_frame(
        self,
        reply: Reply,
        *,
        with_params: bool,
        wants: Mapping[str, np.ndarray] | None = None,
    ) -> EncodedFrame:
        """A reply's frame: with the parameters, their version's (whose version and done win
        over the reply's), else the header alone; and the rows of ``wants`` (sparse tables)."""
        if wants:
            return await self.frame_with_rows(reply, with_params=with_params, wants=wants)
        if with_params:
            return await self.encoded_params(reply.fields())
        return frame_buffers({**reply.fields(), "shard": self.index, "epoch": self.epoch})

    async def wait_for_version(self, after: int, timeout_s: float) -> None:
        """Return once version > after (or the job is done), or after ``timeout_s``.

        A future woken by the update and a timer, not ``asyncio.wait_for`` on an event: that
        makes a task per wait (Python 3.11), and every held sync reply waits here.
        """
        if self.version > after or self.done or self.stopping or timeout_s <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        rewinds = self.rewinds  # a rewind answers at once, with the cut's version
        while (
            self.version <= after
            and not self.done
            and not self.stopping
            and self.rewinds == rewinds
        ):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._version_waiters.append(waiter)
            timer = loop.call_later(remaining, wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()

    def release_waiters(self) -> None:
        """On shutdown: answer every held pull and push now, with the current version."""
        self.stopping = True
        self._wake_version_waiters()

    def snapshot(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "version": self.version,
            "done": self.done,
            "mode": self.job.mode.value,
            "received": self.metrics.tally_received,
            "applied": self.metrics.tally_applied,
            "dropped": dict(self.metrics.tally_dropped),
            "live_workers": None if self.members is None else len(self.members),
            "required": self.required,
            "gathering": len(self._contributors),
            "restored_from": self.restored_from,
            # sync recovery: waiting for the cut; checkpoints on disk; cuts applied
            "recovering": self.recovering,
            "checkpoints": self.checkpoint_versions,
            "epoch": self.epoch,
            "rewinds": self.rewinds,
            "rewound_to": self.rewound_to,
            "max_gather_seconds": self.max_gather_s,
        }

"""What others read: the current version's parameters as a reply frame, encoded once per version
and lent to each caller; long-polls waiting for a newer version; the status summary."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ps_server.state.core import ShardCore
from pscluster.protocol import EncodedFrame, encode_frame


class Reads(ShardCore):
    async def encoded_params(self) -> EncodedFrame:
        """The parameters of the current version as a frame, encoded once per version and lent
        to each caller (see ``Snapshot``): hold it only as long as it is being sent."""
        snapshot = self._snapshot
        if snapshot is not None:
            # Checked and lent in one go, with no await between: an update that overwrites the
            # frame in place first takes it away from here, and only when nobody holds it.
            return snapshot.lend()
        # Made under the lock, between two updates: one made while an update runs on a thread
        # would mix two versions.
        return await self._locked(self._encode_current)

    async def _encode_current(self) -> EncodedFrame:
        # Every update writes its version's frame as it goes; this is for the versions no update
        # made here (the first, one restored from a checkpoint).
        if self._snapshot is None:
            snapshot = self._new_snapshot(self.version)
            await self._math(lambda: snapshot.fill(self.params))
            self._snapshot = snapshot
        return self._snapshot.lend()

    def status_frame(self) -> bytes:
        return encode_frame({"version": self.version, "done": self.done, "shard": self.index})

    async def wait_for_version(self, after: int, timeout_s: float) -> None:
        """Return once version > after (or the job is done), or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.version <= after and not self.done and not self.stopping:
            event = self._version_changed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return

    def release_waiters(self) -> None:
        """On shutdown: answer every held pull and push now, with the current version."""
        self.stopping = True
        self._version_changed.set()

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
            "max_gather_seconds": self.max_gather_s,
        }

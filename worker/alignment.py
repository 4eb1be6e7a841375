"""Sync: a worker computes only on parameters of one version and one epoch, the same on every
shard.

Normally every shard's reply to a step's pushes carries the next version, and there is nothing to
do. The versions differ when a shard's step closed without this worker (spares, a deadline) or a
reply timed out: the shard behind is long-polled briefly for the others' version. The epochs
differ while the shards rewind to a consistent cut after a crash (``coordinator.recovery``): a
shard that has rewound is at the cut under a new epoch, and what the worker holds of the others
is from before it; those are asked again until they too report the new epoch. Computing on such a
mix would make a gradient of no version at all, and break the bit-identical replay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

# Rounds of asking before the worker goes on with what it has (a shard that never agrees must
# not stall the worker for good): ALIGN_ROUNDS x ALIGN_WAIT_S is about a minute.
ALIGN_ROUNDS = 240
ALIGN_WAIT_S = 0.25
ALIGN_PAUSE_S = 0.1


class ShardVersion(Protocol):
    version: int
    epoch: int
    done: bool


Pull = Callable[[int, int, float], Awaitable[None]]  # (shard index, after, wait seconds)


def disagreeing(shards: Sequence[ShardVersion]) -> dict[int, int]:
    """The shards (not done) to ask again, each with the ``after`` to long-poll it with (-1: its
    epoch is older than another's, ask for its present state); empty when they all agree."""
    live = {i: (s.epoch, s.version) for i, s in enumerate(shards) if not s.done}
    if len(set(live.values())) <= 1:
        return {}
    top_epoch, top_version = max(live.values())
    asks = {}
    for index, (epoch, version) in live.items():
        if epoch < top_epoch:
            asks[index] = -1
        elif version < top_version:
            asks[index] = top_version - 1
    return asks


async def align(shards: Sequence[ShardVersion], pull: Pull) -> int:
    """Ask the shards until every one not done is at the same epoch and version; that version
    (the highest seen if they never agree within ``ALIGN_ROUNDS``)."""
    for _ in range(ALIGN_ROUNDS):
        asks = disagreeing(shards)
        if not asks:
            break
        await asyncio.gather(
            *(pull(i, after, ALIGN_WAIT_S if after >= 0 else 0.0) for i, after in asks.items())
        )
        if all(after < 0 for after in asks.values()):
            await asyncio.sleep(ALIGN_PAUSE_S)  # a rewind on its way: do not spin meanwhile
    else:
        log.warning("shards still at different versions: %s", [s.version for s in shards])
    live = [s.version for s in shards if not s.done]
    return max(live or [s.version for s in shards])

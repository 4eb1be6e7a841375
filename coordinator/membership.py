"""Membership decisions as pure functions of the worker table and the clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerRecord:
    worker_id: str
    rank: int
    last_seen: float  # monotonic seconds
    stats: dict[str, Any] = field(default_factory=dict)


def assign_rank(
    workers: Mapping[str, WorkerRecord], worker_id: str, world: int, preferred: int | None = None
) -> int | None:
    """A known worker keeps its rank; a returning one (after a coordinator restart) gets the rank
    it asks for when that is free; a new one gets the lowest free rank below ``world``.

    None when all N + k ranks are held by live workers.
    """
    if worker_id in workers:
        return workers[worker_id].rank
    taken = {record.rank for record in workers.values()}
    if preferred is not None and 0 <= preferred < world and preferred not in taken:
        return preferred
    return next((rank for rank in range(world) if rank not in taken), None)


def expired_workers(workers: Mapping[str, WorkerRecord], now: float, lease_s: float) -> list[str]:
    """Workers whose last heartbeat is older than the lease: they are presumed dead."""
    return sorted(w for w, record in workers.items() if now - record.last_seen > lease_s)


def members_by_rank(workers: Mapping[str, WorkerRecord]) -> dict[str, int]:
    return {worker_id: record.rank for worker_id, record in workers.items()}


def may_announce_membership(
    *, registered: int, aggregate: int, now: float, last_joined: float | None, grace_s: float
) -> bool:
    """Whether the first membership since the coordinator (re)started may go to the shards.

    Until then a shard counts on N gradients a step from whoever pushes. Announcing a table that
    holds only the workers registered so far would let steps close with fewer than N: on a busy
    machine the other workers may still be starting (which, with the grace counted from the
    coordinator's own start, made a few steps at the start of a job close with fewer than N),
    and after a restart they re-register one by one. So: once N workers have registered, or, if
    fewer ever come, once no new one has for a grace period (one lease: every live worker
    heartbeats, and so re-registers, within it). Later changes are announced at once.
    """
    if registered >= aggregate:
        return True
    return last_joined is not None and now - last_joined >= grace_s

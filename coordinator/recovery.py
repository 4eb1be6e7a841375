"""Sync recovery, the coordinator's side: the consistent cut across shards.

Every shard takes its periodic checkpoints at exactly their versions and reports the versions it
holds (``/state``). The cut is the newest version that every shard holds, or 0: the seed's
parameters, which every shard can rebuild. Each poll the coordinator

- tells every shard the cut (``keep_from``): each keeps its checkpoints from there on and may
  delete older ones, so a cut never needs a deleted file;
- when a shard has restarted (it reports ``recovering``), fixes a rewind to the cut as a new epoch
  and sends it to every shard until each reports that epoch. The restarted shard serves nobody
  until then; the live ones answer their held replies with the cut's parameters, so workers
  rewind with them (``worker.alignment``).

Async and ssp jobs have no cut: a restarted shard resumes from its own newest checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from coordinator.membership import members_by_rank
from coordinator.state import COORDINATOR
from pscluster.client import post_json
from pscluster.settings import Mode
from pscluster.settings.timeouts import CONTROL_CALL_TIMEOUT_S

log = logging.getLogger(__name__)


def consistent_cut(offers: Sequence[Sequence[int]]) -> int:
    """The newest version every shard holds a checkpoint of (0 when they share none)."""
    common = set.intersection(*(set(offer) for offer in offers)) if offers else set()
    return max(common | {0})


@dataclass(frozen=True)
class Rewind:
    version: int
    epoch: int


def plan_rewind(
    shards: Sequence[Mapping[str, Any]], pending: Rewind | None, now_ms: int
) -> Rewind | None:
    """The rewind in progress: a new one when a shard reports it restarted, the pending one
    until every shard reports its epoch, else None.

    A new epoch is the wall clock in milliseconds (and above every shard's): epochs only ever
    grow, also when the coordinator and every shard restart together and nobody remembers the
    last one, so a worker can always tell which of its views of the shards is from before a
    rewind. ``shards`` are the shards' latest ``/state`` (each with ``checkpoints``,
    ``recovering`` and ``epoch``)."""
    if pending is not None:
        if all(not s.get("recovering") and s.get("epoch", 0) >= pending.epoch for s in shards):
            return None
        return pending
    if not any(s.get("recovering") for s in shards):
        return None
    cut = consistent_cut([s.get("checkpoints", []) for s in shards])
    return Rewind(cut, max([now_ms, *(1 + int(s.get("epoch", 0)) for s in shards)]))


@dataclass
class Recovery:
    """What the coordinator keeps of the cut: soft state, rebuilt from the shards' reports."""

    pending: Rewind | None = None
    keep_from: int = 0  # the cut the shards were last told
    rewinds: int = 0
    last_rewind_to: int | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "cut": self.keep_from,
            "rewinds": self.rewinds,
            "last_rewind_to": self.last_rewind_to,
            "rewinding": self.pending is not None,
        }


RECOVERY = web.AppKey("recovery", Recovery)


async def maintain_cut(app: web.Application) -> None:
    """One round: rewind every shard not yet at the pending epoch, or tell them the cut."""
    coordinator, recovery = app[COORDINATOR], app[RECOVERY]
    states = coordinator.shard_states
    if coordinator.job.mode is not Mode.SYNC or not coordinator.all_shards_known:
        return
    if not all(s.get("ready") for s in states):
        return  # the cut needs every shard's offer
    pending = plan_rewind(states, recovery.pending, time.time_ns() // 1_000_000)
    if pending is not None and pending != recovery.pending:
        # Not at the job's start, where every shard begins at version 0 anyway.
        if pending.version > 0 or any(s.get("version", 0) > 0 for s in states):
            recovery.rewinds += 1
            recovery.last_rewind_to = pending.version
            log.warning("a shard restarted: every shard rewinds to version %d", pending.version)
    recovery.pending = pending
    cut = consistent_cut([s.get("checkpoints", []) for s in states])
    if pending is None and cut == recovery.keep_from:
        return
    rewind: dict[str, Any] | None = None
    if pending is not None:
        rewind = {"version": pending.version, "epoch": pending.epoch}
        if coordinator.membership_announced:
            # A restarted shard folds in rank order from its first push: it needs the members.
            rewind["workers"] = members_by_rank(coordinator.workers)
        cut = min(cut, pending.version)
    session = coordinator.http

    async def tell(index: int, url: str) -> bool:
        body: dict[str, Any] = {"keep_from": cut}
        if rewind is not None and (
            states[index].get("recovering") or states[index].get("epoch", 0) < rewind["epoch"]
        ):
            body["rewind"] = rewind
        try:
            status, reply = await post_json(session, f"{url}/cut", body, CONTROL_CALL_TIMEOUT_S)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("could not reach shard %s (%s)", url, type(exc).__name__)
            return False
        if status != 200:
            log.warning("shard %s refused the cut: %s %s", url, status, reply)
            return False
        states[index].update(reply)
        return True

    told = await asyncio.gather(
        *(tell(i, url) for i, url in enumerate(coordinator.shard_urls) if url)
    )
    if all(told) and pending is None:
        recovery.keep_from = cut

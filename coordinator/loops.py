"""The coordinator's background work: announce membership to the shards, poll their state,
evaluate the held-out data, and decide when the job is done."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from coordinator.membership import may_announce_membership, members_by_rank
from coordinator.metrics import METRICS
from coordinator.recovery import maintain_cut
from coordinator.sparse_eval import HeldOutRows, score
from coordinator.state import COORDINATOR
from pscluster.client import get_json, make_session, post_json
from pscluster.faults import maybe_kill
from pscluster.models.sparse import is_sparse
from pscluster.protocol import ProtocolError, decode_frame
from pscluster.receive import read_frame_body
from pscluster.service import background
from pscluster.settings.timeouts import CONTROL_CALL_TIMEOUT_S, COORDINATOR_REQUEST_TIMEOUT_S
from pscluster.sharding import allocate_full, assemble_into

log = logging.getLogger(__name__)

MAX_PARAMS_BYTES = 4 << 30


async def announce_membership(app: web.Application, *, force: bool) -> None:
    """Send the live worker table to every known shard (when it changed, or when forced)."""
    coordinator = app[COORDINATOR]
    if not coordinator.membership_announced and not may_announce_membership(
        registered=len(coordinator.workers),
        aggregate=coordinator.job.workers,
        now=time.monotonic(),
        last_joined=coordinator.last_joined,
        grace_s=coordinator.settings.heartbeat_lease_s,
    ):
        return
    if not (
        force or coordinator.membership_changed.is_set() or not coordinator.membership_announced
    ):
        return
    coordinator.membership_changed.clear()
    coordinator.membership_announced = True
    members = members_by_rank(coordinator.workers)
    session = coordinator.http

    async def tell(url: str) -> None:
        try:
            await post_json(
                session, f"{url}/membership", {"workers": members}, CONTROL_CALL_TIMEOUT_S
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("could not reach shard %s (%s)", url, type(exc).__name__)

    await asyncio.gather(*(tell(url) for url in coordinator.shard_urls if url))


async def poll_shards(app: web.Application) -> None:
    coordinator = app[COORDINATOR]
    session = coordinator.http

    async def poll(index: int, url: str) -> None:
        try:
            status, state = await get_json(session, f"{url}/state", CONTROL_CALL_TIMEOUT_S)
        except (aiohttp.ClientError, TimeoutError):
            return
        if status == 200 and state.get("ready"):
            coordinator.shard_states[index] = state

    await asyncio.gather(*(poll(i, url) for i, url in enumerate(coordinator.shard_urls) if url))


async def evaluate(app: web.Application) -> None:
    """Pull the parameters from every shard and score the held-out data."""
    coordinator = app[COORDINATOR]
    session = coordinator.http
    full = allocate_full(coordinator.shapes)

    async def pull(index: int, url: str) -> int:
        # The session's timeout (COORDINATOR_REQUEST_TIMEOUT_S) bounds the whole pull.
        async with session.get(f"{url}/params") as resp:
            # Like a worker's pull: into a pooled buffer, arrays decoded as views of it.
            body = await read_frame_body(resp.content, resp.content_length, MAX_PARAMS_BYTES)
        frame = decode_frame(body)
        assemble_into(full, coordinator.shard_map[index], frame.arrays)
        return int(frame.header["version"])

    versions = await asyncio.gather(
        *(pull(i, url) for i, url in enumerate(coordinator.shard_urls) if url)
    )
    data = coordinator.dataset
    params: dict[str, Any] = dict(full)
    if is_sparse(coordinator.model):
        if coordinator.held_out_rows is None:
            coordinator.held_out_rows = HeldOutRows(
                coordinator.model, data.x_test, coordinator.job.shards
            )
        params.update(await coordinator.held_out_rows.fetch(session, coordinator.shard_urls))
    scores = await asyncio.to_thread(score, coordinator.model, params, data.x_test, data.y_test)
    loss, accuracy = scores["loss"], scores["accuracy"]
    step = min(versions)
    seconds = time.time() - (coordinator.training_started or time.time())
    coordinator.history.append(
        {
            "step": step,
            "seconds": round(seconds, 4),
            "loss": float(loss),
            "accuracy": float(accuracy),
            **({"auc": scores["auc"]} if "auc" in scores else {}),
        }
    )
    coordinator.last_eval_step = step
    app[METRICS].observe_eval(step, float(loss), float(accuracy), scores.get("auc"))
    log.info("step %d: held-out loss %.4f accuracy %.4f", step, loss, accuracy)


async def monitor_loop(app: web.Application) -> AsyncIterator[None]:
    coordinator = app[COORDINATOR]
    settings = coordinator.settings
    coordinator.http = make_session(COORDINATOR_REQUEST_TIMEOUT_S, token=settings.cluster_token())

    async def run() -> None:
        last_forced = 0.0
        while True:
            now = time.monotonic()
            coordinator.expire(now)
            # Re-announce now and then, so a restarted shard learns the membership.
            force = now - last_forced > 1.0
            if force:
                last_forced = now
            await announce_membership(app, force=force)
            await poll_shards(app)
            await maintain_cut(app)
            step = coordinator.global_step
            maybe_kill(settings, step)
            due = step >= coordinator.last_eval_step + settings.eval_every
            # Done once every shard has reported too: a restarted coordinator knows the shards'
            # versions from their announcements before its first poll of their state.
            final = (
                step >= coordinator.job.steps
                and coordinator.all_shards_known
                and coordinator.all_shards_reported
            )
            if coordinator.finished is None and coordinator.all_shards_known and (due or final):
                try:
                    await evaluate(app)
                except (aiohttp.ClientError, TimeoutError, ProtocolError, KeyError) as exc:
                    log.warning("evaluation failed (%s); will retry", exc)
                else:
                    if final and coordinator.last_eval_step >= coordinator.job.steps:
                        coordinator.finished = time.time()
                        log.info("job done: %s", coordinator.history[-1])
            app[METRICS].observe_turnover(coordinator.turnover)
            app[METRICS].observe_status(
                live_workers=len(coordinator.workers),
                global_step=coordinator.global_step,
                steps=coordinator.job.steps,
                phase=coordinator.phase,
            )
            await asyncio.sleep(settings.poll_interval_s)

    async with background(run()):
        yield
    await coordinator.http.close()

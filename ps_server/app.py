"""The shard's service: its data port (``ps_server.dataport``) and its HTTP endpoints (state,
membership, metrics; push and pull too, as a plain path), around a ``ShardState``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import yarl
from aiohttp import web
from prometheus_client import CollectorRegistry

from ps_server.checkpoint import CheckpointStore
from ps_server.dataplane import Answer, DataPlane, ShardSlot
from ps_server.dataport import DataPort
from ps_server.metrics import DataMetrics, ShardMetrics
from ps_server.recovery import apply_cut, resume, write_checkpoint
from ps_server.sparse.metrics import register_sparse_metrics
from ps_server.sparse.setup import build_tables
from ps_server.sparse.tables import ShardTables
from ps_server.state import ShardState
from pscluster.client import make_session, post_json
from pscluster.initial import fetch_initial
from pscluster.jobspec import Registration
from pscluster.jsonbody import parse_json_object
from pscluster.messages import Pull, Push, Reply, Status
from pscluster.protocol import MSGPACK, ErrorCode, ProtocolError, decode_frame, frame_buffers
from pscluster.receive import read_body, read_frame_body
from pscluster.service import add_auth, add_observability, background
from pscluster.settings import ShardSettings
from pscluster.settings.timeouts import SHARD_JOIN_RETRY_S, SHUTDOWN_GRACE_S

log = logging.getLogger(__name__)


SLOT = web.AppKey("shard_slot", ShardSlot)
SETTINGS = web.AppKey("shard_settings", ShardSettings)
METRICS = web.AppKey("shard_metrics", ShardMetrics)
URL = web.AppKey("shard_url", str)
PLANE = web.AppKey("shard_data_plane", DataPlane)
PORT = web.AppKey("shard_data_port", DataPort)
# Where workers reach the data port (tcp://host:port), known once it listens.
DATA_URL = web.AppKey("shard_data_url", list[str])

# A membership body maps worker ids to ranks: a megabyte holds tens of thousands of them.
MEMBERSHIP_BODY_BYTES = 1 << 20


async def send_answer(request: web.Request, answer: Answer) -> web.StreamResponse:
    """A reply frame as an HTTP response, written buffer by buffer (a version's parameters go
    out from their frame, never joined into one body)."""
    response = web.StreamResponse(status=answer.http_status, headers={"Content-Type": MSGPACK})
    response.content_length = answer.frame.nbytes
    await response.prepare(request)
    for buffer in answer.frame.buffers:
        await response.write(buffer)
    await response.write_eof()
    return response


async def handle_push(request: web.Request) -> web.StreamResponse:
    """A push over HTTP: the same answer as on the data port (``ps_server.dataplane``)."""
    plane = request.app[PLANE]
    try:
        body = await read_frame_body(request.content, request.content_length, plane.max_body_bytes)
        answer = await plane.push(Push.parse(decode_frame(body)), len(body))
    except ProtocolError as exc:
        answer = plane.refusal(exc)
    return await send_answer(request, answer)


async def handle_params(request: web.Request) -> web.StreamResponse:
    """A pull over HTTP (the coordinator's evaluation, tools): query ``after``, ``wait``,
    ``worker``."""
    plane = request.app[PLANE]
    try:
        answer = await plane.pull(Pull.from_query(request.query))
    except ProtocolError as exc:
        answer = plane.refusal(exc)
    return await send_answer(request, answer)


async def handle_rows(request: web.Request) -> web.StreamResponse:
    """Rows by id, without training (the coordinator's evaluation): the body names the ids
    (``@t/want``), the reply carries their rows as of the current version."""
    plane = request.app[PLANE]
    try:
        state = plane.state()
        body = await read_frame_body(request.content, request.content_length, plane.max_body_bytes)
        rows = state.rows_reply(state.parse_sparse(decode_frame(body).arrays).wants)
    except ProtocolError as exc:
        return await send_answer(request, plane.refusal(exc))
    reply = Reply(Status.OK, state.version, state.done)
    frame = frame_buffers({**reply.fields(), "shard": state.index}, rows)
    state.metrics.bytes_sent.inc(frame.nbytes)
    return await send_answer(request, Answer(frame))


def _tables(app: web.Application) -> ShardTables | None:
    state = app[SLOT].state
    return None if state is None else state.tables


async def handle_state(request: web.Request) -> web.Response:
    state = request.app[SLOT].state
    if state is None:
        return web.json_response({"ready": False, "index": request.app[SETTINGS].shard_index})
    return web.json_response({"ready": True, **state.snapshot()})


async def handle_membership(request: web.Request) -> web.Response:
    """The coordinator says which workers are live (id -> rank)."""
    try:
        state = request.app[PLANE].state()
        payload = parse_json_object(
            await read_body(request.content, request.content_length, MEMBERSHIP_BODY_BYTES)
        )
        members = payload.get("workers")
        if not isinstance(members, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in members.items()
        ):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "'workers' must map worker id to rank")
    except ProtocolError as exc:
        return web.json_response(
            {"error": exc.code.value, "message": exc.message}, status=exc.status
        )
    await state.set_members(members)
    return web.json_response({"version": state.version, "required": state.required})


async def announce_loop(app: web.Application) -> AsyncIterator[None]:
    """Register with the coordinator until it answers with the job; then keep re-announcing,
    so a restarted coordinator learns where this shard is."""
    settings = app[SETTINGS]
    slot = app[SLOT]
    session = make_session(settings.request_timeout_s, token=settings.cluster_token())

    async def run() -> None:
        url = f"{settings.coordinator_url.rstrip('/')}/register/shard"
        while True:
            payload = {"index": settings.shard_index, "url": app[URL], "data_url": app[DATA_URL][0]}
            if slot.state is not None:
                payload["version"] = slot.state.version
            try:
                status, reply = await post_json(session, url, payload)
                if status == 200 and slot.state is None:
                    registration = Registration.from_json(reply)
                    # The coordinator draws every initial value: shards build no model.
                    index = settings.shard_index
                    parts = registration.shard_map[index]
                    params = await fetch_initial(session, settings.coordinator_url, parts, index)
                    state = ShardState(registration.job, settings.shard_index, params, app[METRICS])
                    state.tables = build_tables(registration, index)
                    resume(state, slot.store)
                    slot.registration = registration
                    slot.state = state
                    slot.ready.set()
                    log.info("shard %d holds %s", settings.shard_index, sorted(params))
                elif status != 200:
                    log.warning("coordinator refused registration: %s %s", status, reply)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("coordinator not reachable yet (%s); retrying", type(exc).__name__)
            except ProtocolError as exc:
                log.warning("initial values refused (%s: %s); retrying", exc.code, exc.message)
            await asyncio.sleep(settings.register_interval_s if slot.state else SHARD_JOIN_RETRY_S)

    async with background(run()):
        yield
    await session.close()


async def handle_cut(request: web.Request) -> web.Response:
    """The coordinator's consistent cut: which checkpoints to keep, and after a restart the
    version every shard rewinds to (``ps_server.recovery``)."""
    slot = request.app[SLOT]
    try:
        state = slot.state
        if state is None:
            raise ProtocolError(ErrorCode.NOT_READY, "shard has not received its job yet", 503)
        payload = parse_json_object(
            await read_body(request.content, request.content_length, MEMBERSHIP_BODY_BYTES)
        )
        registration = slot.registration
        assert registration is not None
        settings = request.app[SETTINGS]

        async def initial() -> dict[str, np.ndarray]:
            # Back to version 0 (a crash before any checkpoint): the seed's values again.
            index, token = settings.shard_index, settings.cluster_token()
            try:
                async with make_session(settings.request_timeout_s, token=token) as session:
                    parts = registration.shard_map[index]
                    return await fetch_initial(session, settings.coordinator_url, parts, index)
            except (aiohttp.ClientError, TimeoutError) as exc:
                message = f"initial values unavailable ({type(exc).__name__})"
                raise ProtocolError(ErrorCode.NOT_READY, message, 503) from exc

        reply = await apply_cut(state, slot.store, payload, initial)
    except ProtocolError as exc:
        return web.json_response(
            {"error": exc.code.value, "message": exc.message}, status=exc.status
        )
    return web.json_response(reply)


async def checkpoint_loop(app: web.Application) -> AsyncIterator[None]:
    """Checkpoint every K versions while running (each taken at its version), and once more on
    the way out."""
    slot = app[SLOT]
    store = slot.store
    if store is None:
        yield
        return

    async def run() -> None:
        await slot.ready.wait()
        assert slot.state is not None
        while True:
            await slot.state.checkpoint_due.wait()
            slot.state.checkpoint_due.clear()
            await write_checkpoint(slot.state, store, final=False)

    async with background(run()):
        yield
    # In-flight requests have finished by now (cleanup runs after the server's shutdown).
    if slot.state is not None:
        await write_checkpoint(slot.state, store, final=not slot.state.recovering)


async def data_port(app: web.Application) -> AsyncIterator[None]:
    """The data port, listening from start-up (before the shard announces itself) until the
    in-flight requests are answered on the way out (before the final checkpoint)."""
    settings = app[SETTINGS]
    port = await app[PORT].start(settings.host, settings.data_port)
    app[DATA_URL].append(data_url(app[URL], port))
    yield
    await app[PORT].close(SHUTDOWN_GRACE_S)


def data_url(url: str, port: int) -> str:
    """The data port's address on the host that others reach this shard's URL at."""
    host = yarl.URL(url).raw_host or "127.0.0.1"
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


async def release_held_requests(app: web.Application) -> None:
    """Shutdown step 2 (after the listeners closed): answer held long-polls and sync pushes
    now, so in-flight work finishes well within the grace period."""
    app[PORT].stop_accepting()
    state = app[SLOT].state
    if state is not None:
        state.release_waiters()


def build_app(settings: ShardSettings, url: str) -> web.Application:
    app = web.Application(client_max_size=int(settings.max_body_mb * 2**20))
    registry = CollectorRegistry()
    app[SETTINGS] = settings
    app[METRICS] = ShardMetrics(registry)
    register_sparse_metrics(registry, lambda: _tables(app), settings.shard_index)
    directory = settings.checkpoint_dir
    app[SLOT] = ShardSlot(CheckpointStore(directory, settings.shard_index) if directory else None)
    app[URL] = url
    slot = app[SLOT]
    app[PLANE] = DataPlane(slot, settings, app[METRICS])
    app[PORT] = DataPort(app[PLANE], DataMetrics(registry), settings.cluster_token())
    app[DATA_URL] = []
    # Ready once it holds its job: the coordinator has handed it the job and its parameters.
    add_observability(
        app, registry, lambda: None if slot.state is not None else "waiting for the job"
    )
    app.router.add_post("/push", handle_push)
    app.router.add_get("/params", handle_params)
    app.router.add_post("/rows", handle_rows)
    app.router.add_get("/state", handle_state)
    app.router.add_post("/membership", handle_membership)
    app.router.add_post("/cut", handle_cut)
    # Stopped in reverse: the announcements, the data port, then the final checkpoint.
    app.cleanup_ctx.append(checkpoint_loop)
    app.cleanup_ctx.append(data_port)
    app.cleanup_ctx.append(announce_loop)
    app.on_shutdown.append(release_held_requests)
    add_auth(app, settings.cluster_token())
    return app

"""The shard's HTTP service: push, pull, state and membership, around a ``ShardState``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from ps_server.checkpoint import CheckpointStore
from ps_server.metrics import ShardMetrics
from ps_server.state import OFFLOAD_ELEMENTS, ShardState
from pscluster.client import (
    FramePayload,
    make_session,
    post_json,
    read_body,
    read_frame_body,
)
from pscluster.faults import maybe_kill
from pscluster.initial import fetch_initial
from pscluster.jobspec import Registration
from pscluster.jsonbody import parse_json_object
from pscluster.protocol import MSGPACK, ErrorCode, ProtocolError, decode_frame, error_frame
from pscluster.service import add_auth, add_observability, background
from pscluster.settings import Mode, ShardSettings
from pscluster.settings.timeouts import MAX_PULL_WAIT_S, SHARD_JOIN_RETRY_S

log = logging.getLogger(__name__)


class ShardSlot:
    """Holds the shard's state once the coordinator has handed it the job (the app's own mapping
    is frozen after start-up), and the count of pushes in flight."""

    def __init__(self) -> None:
        self.state: ShardState | None = None
        self.ready = asyncio.Event()
        self.inflight = 0


SLOT = web.AppKey("shard_slot", ShardSlot)
SETTINGS = web.AppKey("shard_settings", ShardSettings)
METRICS = web.AppKey("shard_metrics", ShardMetrics)
URL = web.AppKey("shard_url", str)

# A membership body maps worker ids to ranks: a megabyte holds tens of thousands of them.
MEMBERSHIP_BODY_BYTES = 1 << 20


def frame_response(body: bytes, status: int = 200, **headers: str) -> web.Response:
    return web.Response(body=body, status=status, content_type=MSGPACK, headers=headers)


def refusal(state: ShardState | None, exc: ProtocolError) -> web.Response:
    version = state.version if state is not None else -1
    body = error_frame(exc.code, exc.message, version=version)
    return frame_response(body, exc.status, **{"PS-Status": exc.code.value})


def _state(request: web.Request) -> ShardState:
    state = request.app[SLOT].state
    if state is None:
        raise ProtocolError(ErrorCode.NOT_READY, "shard has not received its job yet", 503)
    return state


def _int_query(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"query {name!r} is not an integer") from None


async def handle_push(request: web.Request) -> web.Response:
    state: ShardState | None = None
    # A large body is read straight from the socket into its buffer, past aiohttp's parser.
    transport = request.transport
    direct = transport is not None and "Content-Encoding" not in request.headers
    try:
        state = _state(request)
        settings = request.app[SETTINGS]
        # Into one buffer as it arrives; the gradients are views of it, never copied.
        body = await read_frame_body(
            request.content,
            request.content_length,
            int(settings.max_body_mb * 2**20),
            connection=(transport, request.protocol) if direct and transport else None,
        )
        state.metrics.bytes_received.inc(len(body))
        frame = decode_frame(body)
        header = frame.header
        worker, rank = header.get("worker"), header.get("rank")
        base_version, shard = header.get("base_version"), header.get("shard")
        if not isinstance(worker, str) or not worker:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "'worker' must be a non-empty string")
        for name, value in (("rank", rank), ("base_version", base_version), ("shard", shard)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{name!r} must be an integer >= 0")
        if shard != state.index:
            raise ProtocolError(ErrorCode.WRONG_SHARD, f"this is shard {state.index}, not {shard}")
        # The body's buffer is this request's alone: the shard may keep the gradients as they
        # are. The finiteness check reads every byte: off the event loop when large.
        if len(body) >= 4 * OFFLOAD_ELEMENTS:
            grads = await asyncio.to_thread(state.validate_gradients, frame.arrays, owned=True)
        else:
            grads = state.validate_gradients(frame.arrays, owned=True)
    except ProtocolError as exc:
        return refusal(state, exc)
    assert isinstance(rank, int) and isinstance(base_version, int)
    verdict = await state.push(worker=worker, rank=rank, base_version=base_version, grads=grads)
    want_params = bool(header.get("want_params", False))
    waited = 0.0
    gate_open = True
    started = time.perf_counter()
    if state.counts_as_step(verdict):
        # ssp: hold the reply until the worker may start its next step (or ask it to poll).
        gate_open = await state.wait_for_start(worker, state.job.push_wait_s)
    elif verdict.accepted and want_params:
        # sync: hold the reply until the step completes, so it carries the next version.
        await state.wait_for_version(base_version, state.job.push_wait_s)
    waited = time.perf_counter() - started
    # Parameters ride along with every reply but a duplicate's (that worker's gradient is in
    # the step; it long-polls for the result). A future_version reply means the shard restarted
    # from a checkpoint older than what the worker saw: the worker rewinds to these parameters.
    send_params = want_params and verdict.code is not ErrorCode.DUPLICATE
    # Parameters are encoded once per version and written straight from that snapshot.
    reply = FramePayload(
        await state.encoded_params() if send_params else state.status_frame(), once=True
    )
    state.metrics.bytes_sent.inc(reply.size)
    status = 200 if verdict.accepted else 409
    code = "applied" if verdict.code is None else verdict.code.value
    headers = {"PS-Status": code, "PS-Waited": f"{waited:.6f}", "PS-Gate": _gate(gate_open)}
    return web.Response(body=reply, status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.Response]]


def bounded_push(handler: Handler) -> Handler:
    """Cap the pushes in flight (each holds its body in memory): over the cap, refuse 'busy' and
    let the worker back off. Then, for fault-injection tests, die at the configured version."""

    async def bounded(request: web.Request) -> web.Response:
        slot, settings = request.app[SLOT], request.app[SETTINGS]
        if slot.inflight >= settings.max_inflight_pushes:
            exc = ProtocolError(ErrorCode.BUSY, "too many pushes in flight; retry", 503)
            return refusal(slot.state, exc)
        slot.inflight += 1
        try:
            return await handler(request)
        finally:
            slot.inflight -= 1
            if slot.state is not None:
                maybe_kill(settings, slot.state.version)

    return bounded


async def handle_params(request: web.Request) -> web.Response:
    """Pull: the current parameters, long-polling until version > ``after`` (up to ``wait``)."""
    state: ShardState | None = None
    try:
        state = _state(request)
        after = _int_query(request, "after", -1)
        try:
            wait_s = min(MAX_PULL_WAIT_S, max(0.0, float(request.query.get("wait", 0))))
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "query 'wait' is not a number") from None
    except ProtocolError as exc:
        return refusal(state, exc)
    gate_open = True
    worker = request.query.get("worker")
    if worker and state.job.mode is Mode.SSP:
        # ssp: a worker whose push reply found the gate closed waits here for it to open.
        gate_open = await state.wait_for_start(worker, wait_s)
    elif wait_s > 0:
        await state.wait_for_version(after, wait_s)
    body = FramePayload(await state.encoded_params(), once=True)
    state.metrics.bytes_sent.inc(body.size)
    return web.Response(body=body, headers={"PS-Gate": _gate(gate_open)})


def _gate(is_open: bool) -> str:
    """ssp: whether the worker may start its next step ("open") or must ask again."""
    return "open" if is_open else "closed"


async def handle_state(request: web.Request) -> web.Response:
    state = request.app[SLOT].state
    if state is None:
        return web.json_response({"ready": False, "index": request.app[SETTINGS].shard_index})
    return web.json_response({"ready": True, **state.snapshot()})


async def handle_membership(request: web.Request) -> web.Response:
    """The coordinator says which workers are live (id -> rank)."""
    try:
        state = _state(request)
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
            payload = {"index": settings.shard_index, "url": app[URL]}
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
                    restore_newest(state, settings)
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


def restore_newest(state: ShardState, settings: ShardSettings) -> None:
    """Resume from the newest checkpoint that verifies, if there is one."""
    if settings.checkpoint_dir is None:
        return
    checkpoint = CheckpointStore(settings.checkpoint_dir, settings.shard_index).newest_valid()
    if checkpoint is not None:
        state.restore(checkpoint)
        log.info("restored version %d from %s", checkpoint.version, checkpoint.path)


async def write_checkpoint(state: ShardState, store: CheckpointStore) -> None:
    version, body = await state.checkpoint_body()
    path = await asyncio.to_thread(store.write, version, body)
    log.info("checkpoint of version %d written to %s", version, path)


async def checkpoint_loop(app: web.Application) -> AsyncIterator[None]:
    """Checkpoint every K versions while running, and once more on the way out."""
    settings, slot = app[SETTINGS], app[SLOT]
    if settings.checkpoint_dir is None:
        yield
        return
    store = CheckpointStore(settings.checkpoint_dir, settings.shard_index)

    async def run() -> None:
        await slot.ready.wait()
        assert slot.state is not None
        while True:
            await slot.state.checkpoint_due.wait()
            slot.state.checkpoint_due.clear()
            await write_checkpoint(slot.state, store)

    async with background(run()):
        yield
    # In-flight requests have finished by now (cleanup runs after the server's shutdown).
    if slot.state is not None:
        await write_checkpoint(slot.state, store)


async def release_held_requests(app: web.Application) -> None:
    """Shutdown step 2 (after the listener closed): answer held long-polls and sync pushes now,
    so in-flight work finishes well within the grace period."""
    state = app[SLOT].state
    if state is not None:
        state.release_waiters()


def build_app(settings: ShardSettings, url: str) -> web.Application:
    app = web.Application(client_max_size=int(settings.max_body_mb * 2**20))
    registry = CollectorRegistry()
    app[SETTINGS] = settings
    app[METRICS] = ShardMetrics(registry)
    app[SLOT] = ShardSlot()
    app[URL] = url
    slot = app[SLOT]
    # Ready once it holds its job: the coordinator has handed it the job and its parameters.
    add_observability(
        app, registry, lambda: None if slot.state is not None else "waiting for the job"
    )
    app.router.add_post("/push", bounded_push(handle_push))
    app.router.add_get("/params", handle_params)
    app.router.add_get("/state", handle_state)
    app.router.add_post("/membership", handle_membership)
    app.cleanup_ctx.append(checkpoint_loop)
    app.cleanup_ctx.append(announce_loop)
    app.on_shutdown.append(release_held_requests)
    add_auth(app, settings.cluster_token())
    return app

"""The coordinator's HTTP handlers: parse a JSON request, call the state, answer (or refuse with
an ``ErrorCode``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from coordinator.loops import announce_membership
from coordinator.recovery import RECOVERY
from coordinator.state import COORDINATOR
from pscluster.jsonbody import parse_json_object, parse_worker_stats
from pscluster.protocol import MSGPACK, ErrorCode, ProtocolError, error_json
from pscluster.receive import read_body


async def _json_body(request: web.Request) -> dict[str, Any]:
    return parse_json_object(await read_body(request.content, request.content_length, 1 << 20))


def _refuse(exc: ProtocolError) -> web.Response:
    return web.json_response(error_json(exc.code, exc.message), status=exc.status)


def _field(payload: dict[str, Any], name: str, kind: type) -> Any:
    value = payload.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{name!r} must be a {kind.__name__}")
    return value


async def handle_register_shard(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    try:
        payload = await _json_body(request)
        index, url = _field(payload, "index", int), _field(payload, "url", str)
        version, data_url = payload.get("version"), payload.get("data_url")
        registration = coordinator.register_shard(
            index,
            url,
            version if isinstance(version, int) else None,
            data_url if isinstance(data_url, str) else None,
        )
    except ProtocolError as exc:
        return _refuse(exc)
    return web.json_response(registration.to_json())


async def handle_register_worker(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    try:
        payload = await _json_body(request)
        worker_id = _field(payload, "worker_id", str)
        preferred = payload.get("rank")
        registration = coordinator.register_worker(
            worker_id, preferred if isinstance(preferred, int) else None
        )
    except ProtocolError as exc:
        return _refuse(exc)
    # Shards must know a new member before it pushes.
    await announce_membership(request.app, force=False)
    return web.json_response(registration.to_json())


async def handle_heartbeat(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    try:
        payload = await _json_body(request)
        worker_id = _field(payload, "worker_id", str)
        stats = parse_worker_stats(payload.get("stats"))
        reply = coordinator.heartbeat(worker_id, stats)
    except ProtocolError as exc:
        return _refuse(exc)
    return web.json_response(reply)


async def handle_deregister(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    try:
        payload = await _json_body(request)
        worker_id = _field(payload, "worker_id", str)
        stats = parse_worker_stats(payload.get("stats"))
    except ProtocolError as exc:
        return _refuse(exc)
    coordinator.deregister(worker_id, stats)
    await announce_membership(request.app, force=False)
    return web.json_response({"phase": coordinator.phase})


async def handle_initial(request: web.Request) -> web.Response:
    """A shard's initial parameters (a msgpack frame), drawn by the coordinator from the seed."""
    coordinator = request.app[COORDINATOR]
    try:
        body = coordinator.initial_body(int(request.match_info["index"]))
    except ProtocolError as exc:
        return _refuse(exc)
    return web.Response(body=body, content_type=MSGPACK)


async def handle_status(request: web.Request) -> web.Response:
    status = request.app[COORDINATOR].status()
    return web.json_response({**status, "recovery": request.app[RECOVERY].summary()})

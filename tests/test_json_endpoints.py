"""Every JSON endpoint of the coordinator and the shard, against deeply nested, malformed and
randomly generated bodies: never a 5xx, every refusal a 4xx with an error code, and the deep or
malformed ones change no state."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import aiohttp
import pytest

from pscluster.jsonbody import MAX_JSON_DEPTH, parse_json_object, parse_worker_stats
from pscluster.protocol import ErrorCode, ProtocolError
from tests.cluster import TOKEN, local_cluster

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
CODES = {code.value for code in ErrorCode}
COORDINATOR_ENDPOINTS = ["/register/worker", "/heartbeat", "/deregister", "/register/shard"]
FIELDS = ["worker_id", "rank", "stats", "index", "url", "version", "workers", "steps", "loss"]
FIELDS += ["keep_from", "rewind", "epoch"]


def nested(depth: int, kind: str) -> bytes:
    """A JSON object whose first field holds ``depth`` levels of lists or objects."""
    if kind == "list":
        inner = "[" * depth + "]" * depth
    else:
        inner = '{"a":' * depth + "1" + "}" * depth
    return f'{{"worker_id": "w0", "stats": {inner}, "workers": {inner}}}'.encode()


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value, mostly objects keyed by the endpoints' own field names."""
    kind = rng.choice(["obj", "obj", "list", "int", "float", "str", "bool", "null"])
    if depth >= 4 or kind in ("int", "float", "str", "bool", "null"):
        return {
            "int": lambda: rng.choice([0, 1, -1, 7, 2**63, -(2**70)]),
            "float": lambda: rng.choice([0.5, -1e300, 1e-300]),
            "str": lambda: rng.choice(["", "w0", "http://127.0.0.1:1", "\u00e9" * 3]),
            "bool": lambda: rng.random() < 0.5,
            "null": lambda: None,
            "obj": lambda: {},
            "list": lambda: [],
        }[kind]()
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = rng.sample(FIELDS, rng.randint(0, 4))
    return {key: random_json(rng, depth + 1) for key in keys}


def coordinator_digest(coordinator) -> str:
    table = sorted(
        (w, r.rank, json.dumps(r.stats, sort_keys=True)) for w, r in coordinator.workers.items()
    )
    return hashlib.sha256(json.dumps([table, coordinator.shard_urls]).encode()).hexdigest()


def test_depth_is_checked_without_recursion() -> None:
    assert parse_json_object(nested(MAX_JSON_DEPTH - 2, "dict"))["worker_id"] == "w0"
    for depth in (MAX_JSON_DEPTH, 10_000, 200_000):
        for kind in ("list", "dict"):
            with pytest.raises(ProtocolError) as caught:
                parse_json_object(nested(depth, kind))
            assert caught.value.code is ErrorCode.BAD_MESSAGE and caught.value.status == 400
    for body in (b"", b"\xff\xfe", b"[1, 2]", b'"text"', b"{", b"nul"):
        with pytest.raises(ProtocolError):
            parse_json_object(body)


def test_worker_stats_are_scalars_or_objects_of_scalars() -> None:
    good = {"steps": 3, "loss": 0.5, "phase_seconds": {"pull": 0.1}, "pushes": {}, "x": None}
    assert parse_worker_stats(good) == good
    assert parse_worker_stats(None) == {}
    for bad in ([], "s", {"rank": 3}, {"a": {"b": {}}}, {"a": [1]}, {str(i): 0 for i in range(65)}):
        with pytest.raises(ProtocolError):
            parse_worker_stats(bad)


async def test_every_json_endpoint_refuses_bad_bodies_cleanly() -> None:
    job = {"shards": 1, "workers": 2, "steps": 1000}
    async with local_cluster(job) as cluster:
        await cluster.wait_shards_ready()
        coordinator = cluster.coordinator
        shard_state = cluster.shard_states()[0]
        coord, shard = cluster.coordinator_url, cluster.shard_urls[0]
        urls = [coord + path for path in COORDINATOR_ENDPOINTS]
        urls += [f"{shard}/membership", f"{shard}/cut"]
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            # A registered worker, so heartbeats and deregistrations have someone to name.
            async with http.post(
                f"{coord}/register/worker", json={"worker_id": "w0"}, headers=AUTH
            ) as resp:
                assert resp.status == 200
            members_before = shard_state.members and dict(shard_state.members)
            before = coordinator_digest(coordinator)

            async def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
                async with http.post(url, data=body, headers=AUTH) as resp:
                    text = await resp.read()
                    return resp.status, json.loads(text) if text else {}

            deep = [nested(d, k) for d in (MAX_JSON_DEPTH + 1, 50_000) for k in ("list", "dict")]
            malformed = [b"{", b"\xff", b"[]", b"null", b'{"worker_id": "w0"', b"1e999999"]
            for url in urls:
                for body in deep + malformed:
                    status, reply = await post(url, body)
                    assert status == 400, (url, body[:40])
                    assert reply["error"] == ErrorCode.BAD_MESSAGE.value, url
            # Deep and malformed bodies changed nothing, on either service.
            assert coordinator_digest(coordinator) == before
            assert (shard_state.members and dict(shard_state.members)) == members_before

            rng = random.Random(20261202)
            seen: dict[int, int] = {}
            for _ in range(60):
                for url in urls:
                    body = json.dumps(random_json(rng)).encode()
                    status, reply = await post(url, body)
                    seen[status] = seen.get(status, 0) + 1
                    assert status < 500, (url, body)
                    if status >= 400:
                        assert reply.get("error") in CODES, (url, body, reply)
            # The generator reaches both refusals and accepted requests.
            assert sum(n for s, n in seen.items() if 400 <= s < 500) > 100
            assert seen.get(200, 0) > 0

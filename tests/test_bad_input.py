"""Bad input against a live shard and coordinator: each refused with its 4xx and error code, and
the parameters, optimizer state and membership unchanged afterwards."""

from __future__ import annotations

import hashlib
import io
import json

import aiohttp
import msgpack
import numpy as np

from ps_server.checkpoint import arrays_digest
from pscluster.protocol import MSGPACK, decode_frame, encode_frame
from tests.cluster import TOKEN, local_cluster

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def shard_digest(state) -> str:
    arrays = {**state.params, **state.optimizer.state()}
    return f"{state.version}:{arrays_digest(arrays)}"


def coordinator_digest(coordinator) -> str:
    table = sorted((w, r.rank) for w, r in coordinator.workers.items())
    return hashlib.sha256(json.dumps([table, coordinator.shard_urls]).encode()).hexdigest()


def push_body(state, *, header: dict | None = None, **array_overrides) -> bytes:
    grads = {key: np.full(p.shape, 0.5, np.float32) for key, p in state.params.items()}
    grads.update(array_overrides)
    base = {
        "worker": "w0",
        "rank": 0,
        "base_version": state.version,
        "shard": 0,
        "want_params": False,
    }
    return encode_frame({**base, **(header or {})}, grads)


def with_bad_dtype(body: bytes) -> bytes:
    header, payload = msgpack.unpackb(body)
    name = next(iter(header["arrays"]))
    header["arrays"][name][0] = "complex64"
    return msgpack.packb([header, payload])


async def test_bad_inputs_are_refused_and_change_nothing() -> None:
    job = {"shards": 1, "workers": 2, "optimizer": "momentum", "steps": 1000}
    async with local_cluster(job, shard={"max_body_mb": 1}) as cluster:
        await cluster.wait_shards_ready()
        state = cluster.shard_states()[0]
        shard, coord = cluster.shard_urls[0], cluster.coordinator_url
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await http.post(
                f"{shard}/membership", json={"workers": {"w0": 0, "w1": 1}}, headers=AUTH
            )
            # One good push first, so the optimizer state is not all zeros.
            async with http.post(f"{shard}/push", data=push_body(state), headers=AUTH) as resp:
                assert resp.status == 200
            key = next(iter(state.params))
            shape = state.params[key].shape
            nan = np.full(shape, 0.5, np.float32)
            nan.flat[3] = np.nan
            inf = np.full(shape, 0.5, np.float32)
            inf.flat[0] = np.inf
            shard_cases = [
                ("no token", b"", {}, 401, "unauthorized"),
                (
                    "wrong token",
                    push_body(state),
                    {"Authorization": "Bearer nope"},
                    401,
                    "unauthorized",
                ),
                ("over the size cap", io.BytesIO(b"\x00" * (2 << 20)), AUTH, 413, "too_large"),
                ("not msgpack", b"hello, shard", AUTH, 400, "bad_frame"),
                ("msgpack, not a frame", msgpack.packb({"a": 1}), AUTH, 400, "bad_frame"),
                (
                    "no worker field",
                    push_body(state, header={"worker": None}),
                    AUTH,
                    400,
                    "bad_message",
                ),
                (
                    "rank not an int",
                    push_body(state, header={"rank": "zero"}),
                    AUTH,
                    400,
                    "bad_message",
                ),
                ("unknown dtype", with_bad_dtype(push_body(state)), AUTH, 400, "bad_dtype"),
                (
                    "wrong dtype",
                    push_body(state, **{key: np.zeros(shape, np.float64)}),
                    AUTH,
                    400,
                    "bad_dtype",
                ),
                (
                    "wrong shape",
                    push_body(state, **{key: np.zeros((1, 1), np.float32)}),
                    AUTH,
                    400,
                    "bad_shape",
                ),
                ("NaN", push_body(state, **{key: nan}), AUTH, 400, "not_finite"),
                ("Inf", push_body(state, **{key: inf}), AUTH, 400, "not_finite"),
                (
                    "unknown parameter",
                    push_body(state, bogus=np.zeros(2, np.float32)),
                    AUTH,
                    400,
                    "unknown_parameter",
                ),
                (
                    "unknown worker",
                    push_body(state, header={"worker": "stranger"}),
                    AUTH,
                    409,
                    "unknown_worker",
                ),
                ("wrong shard", push_body(state, header={"shard": 3}), AUTH, 400, "wrong_shard"),
                (
                    "version from the future",
                    push_body(state, header={"base_version": 99}),
                    AUTH,
                    409,
                    "future_version",
                ),
            ]
            before = shard_digest(state)
            for name, body, headers, status, code in shard_cases:
                async with http.post(
                    f"{shard}/push", data=body, headers={"Content-Type": MSGPACK, **headers}
                ) as resp:
                    reply = await resp.read()
                    assert resp.status == status, name
                    if resp.content_type == MSGPACK:  # the verdict: in the frame header only
                        got = decode_frame(reply).header["status"]
                    else:
                        got = json.loads(reply).get("error")
                    assert got == code, name
            assert shard_digest(state) == before
            assert state.version == 0 and len(state._contributors) == 1  # only the good push

            coordinator = cluster.coordinator
            before = coordinator_digest(coordinator)
            coordinator_cases = [
                ("/register/worker", {"worker_id": "x"}, {}, 401, "unauthorized"),
                ("/register/worker", b"not json", AUTH, 400, "bad_message"),
                ("/register/worker", {"id": "x"}, AUTH, 400, "bad_message"),
                ("/register/worker", io.BytesIO(b"[" * (2 << 20)), AUTH, 413, "too_large"),
                (
                    "/register/shard",
                    {"index": 7, "url": "http://127.0.0.1:1"},
                    AUTH,
                    400,
                    "wrong_shard",
                ),
                ("/heartbeat", {"worker_id": "ghost"}, AUTH, 404, "unknown_worker"),
                ("/membership", {}, AUTH, 404, None),  # no such endpoint on the coordinator
            ]
            for path, payload, headers, status, code in coordinator_cases:
                kwargs = {"json": payload} if isinstance(payload, dict) else {"data": payload}
                async with http.post(f"{coord}{path}", headers=headers, **kwargs) as resp:
                    assert resp.status == status, path
                    if code:
                        assert (await resp.json())["error"] == code, path
            assert coordinator_digest(coordinator) == before

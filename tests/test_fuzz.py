"""Property-based: random and mutated bodies get nothing but clean refusals, from the decoder and
from a live shard's push handler."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pscluster.protocol import ErrorCode, ProtocolError, decode_frame, encode_frame
from tests.cluster import TOKEN, local_cluster

VALID = encode_frame(
    {"worker": "w0", "rank": 0, "base_version": 0, "shard": 0, "want_params": False},
    # The live shard below trains softmax regression on digits: exactly these arrays.
    {"w": np.ones((64, 10), np.float32), "b": np.zeros(10, np.float32)},
)
CODES = {code.value for code in ErrorCode}
# The live shard's answers to fuzzed pushes, by code (filled by the handler test).
statuses: dict[str | None, int] = {}


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid frame with bytes flipped, cut, inserted or its header rewritten."""
    body = bytearray(VALID)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(body) - 1))
            body[i] = draw(st.integers(0, 255))
    elif kind == "truncate":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif kind == "insert":
        i = draw(st.integers(0, len(body)))
        body[i:i] = draw(st.binary(min_size=1, max_size=16))
    else:
        header, payload = msgpack.unpackb(bytes(body))
        spec = header["arrays"]["w"]
        field = draw(st.integers(0, 3))
        spec[field] = draw(
            st.one_of(
                st.integers(-(2**40), 2**40),
                st.text(max_size=8),
                st.lists(st.integers(-3, 50), max_size=4),
                st.none(),
            )
        )
        body = bytearray(msgpack.packb([header, payload]))
    return bytes(body)


BODIES = st.one_of(st.binary(max_size=512), mutated())


@given(BODIES)
@settings(max_examples=400, deadline=None)
def test_decoder_only_refuses_cleanly(body: bytes) -> None:
    try:
        frame = decode_frame(body)
    except ProtocolError as exc:
        assert exc.code.value in CODES and 400 <= exc.status < 500
    else:
        for array in frame.arrays.values():
            assert isinstance(array, np.ndarray)


@pytest.fixture(scope="module")
def live_shard() -> Iterator[str]:
    """A coordinator and shard on an event loop in a thread, so hypothesis can drive it."""
    ready: dict[str, str] = {}
    started, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        job = {
            "shards": 1,
            "workers": 1,
            "steps": 10**9,
            "optimizer": "sgd",
            "lr": 1e-6,
            "model": "softmax",
        }
        async with local_cluster(job) as cluster:
            await cluster.wait_shards_ready()
            ready["url"] = cluster.shard_urls[0]
            started.set()
            # Serve until the module's tests are done, within a deadline all the same.
            deadline = time.monotonic() + 300
            while not stop.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert started.wait(20), "shard did not start"
    try:
        yield ready["url"]
    finally:
        stop.set()
        thread.join(20)


@given(BODIES)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_push_handler_only_refuses_cleanly(live_shard: str, body: bytes) -> None:
    request = urllib.request.Request(
        f"{live_shard}/push",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/msgpack"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            status, reply = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, reply = exc.code, exc.read()
        exc.close()
    # The verdict travels in the reply's frame header (a JSON error only for a 401).
    code = decode_frame(reply).header["status"] if reply[:1] == b"\x92" else None
    statuses[code] = statuses.get(code, 0) + 1
    # Never a 5xx: a valid push is applied (200); anything else gets its 4xx and code.
    assert (status == 200 and code == "applied") or (400 <= status < 500 and code in CODES), (
        status,
        code,
    )


def test_fuzzing_reached_the_update_rules(live_shard: str) -> None:
    """Some fuzzed pushes got past decoding and validation (applied, late, duplicate...)."""
    past_validation = {"applied", "late", "duplicate", "future_version"}
    assert sum(statuses.get(code, 0) for code in past_validation) > 0, statuses

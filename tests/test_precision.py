"""16-bit transfer: what rounding to float16 / bfloat16 costs, and shards that take 16-bit pushes,
sum them in float32 and serve 16-bit parameters, on the data port too (large frames included)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ps_server.app import DATA_URL, METRICS, PORT, SLOT, announce_loop, build_app
from ps_server.dataport import DataPort
from ps_server.metrics import ShardMetrics
from ps_server.snapshot import Snapshot
from ps_server.state import ShardState
from pscluster.messages import Push, Status
from pscluster.protocol import (
    WIRE_DTYPES,
    ErrorCode,
    ProtocolError,
    all_finite,
    decode_frame,
    frame_buffers,
    to_wire,
)
from pscluster.receive import OWN_BUFFER_BYTES
from pscluster.service import running_service
from pscluster.settings import JobConfig, ShardSettings
from worker.shard_client import ShardClient

# Round to nearest: the error of one value is at most half a unit in the last place, u |x|
# (float16 stores 10 mantissa bits, bfloat16 7), or below the normal range half the spacing of
# the subnormals (float16's start at 6e-5; bfloat16's, like float32's, at 1e-38).
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
SUBNORMAL_HALF_SPACING = {"float16": 2.0**-25, "bfloat16": 2.0**-134}
DTYPES = sorted(UNIT_ROUNDOFF)


def values(n: int, seed: int = 0) -> np.ndarray:
    """Gradient-like values over several orders of magnitude, inside float16's normal range."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 3, n)).astype(np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wire_round_trip_halves_the_bytes_within_half_an_ulp(dtype: str) -> None:
    params = {"w": values(10_000).reshape(100, 100), "b": values(100, seed=1)}
    # Encoded as a shard serves its parameters: a snapshot filled from them, lent to a reply.
    frames = []
    for wire in (None, dtype):
        snapshot = Snapshot({"version": 1}, params, wire)
        snapshot.fill(params)
        frames.append(snapshot.lend())
    full, half = frames
    assert half.nbytes < 0.52 * full.nbytes
    frame = decode_frame(half.tobytes())
    for name, array in params.items():
        received = frame.arrays[name]
        assert received.dtype == WIRE_DTYPES[dtype] and received.shape == array.shape
        error = np.abs(received.astype(np.float64) - array)
        bound = UNIT_ROUNDOFF[dtype] * np.abs(array) + SUBNORMAL_HALF_SPACING[dtype]
        assert np.all(error <= bound * (1 + 1e-6))
        # Typical values lose far less than the bound allows.
        normal = np.abs(array) > 1e-3
        assert np.median(error[normal] / np.abs(array[normal])) < UNIT_ROUNDOFF[dtype]
        # The same rounding as a plain cast: what a worker sends is what a shard serves.
        np.testing.assert_array_equal(received, to_wire(array, dtype))


def test_float16_overflows_to_inf_and_is_caught() -> None:
    wire = to_wire(np.array([1.0, 7e4], np.float32), "float16")
    assert np.isinf(wire[1]) and not all_finite(wire)
    assert all_finite(to_wire(np.array([1.0, 7e4], np.float32), "bfloat16"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite_reads_16_bit_exponents(dtype: str) -> None:
    array = to_wire(values(1000), dtype)
    assert all_finite(array)
    for bad in (np.nan, np.inf, -np.inf):
        spoiled = array.copy()
        spoiled[500] = bad
        assert not all_finite(spoiled)


def shard(**job: object) -> ShardState:
    config = JobConfig(**{"optimizer": "sgd", "lr": 0.5, "steps": 100, **job})
    params = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    return ShardState(config, 0, params, ShardMetrics(CollectorRegistry()))


@pytest.mark.parametrize("dtype", DTYPES)
async def test_shard_sums_16_bit_pushes_in_float32(dtype: str) -> None:
    state = shard(workers=2, wire_dtype=dtype)
    wire = WIRE_DTYPES[dtype]
    pushes = [
        {"w": to_wire(values(12, seed).reshape(4, 3), dtype), "b": to_wire(values(3, seed), dtype)}
        for seed in (1, 2)
    ]
    for rank, grads in enumerate(pushes):
        valid = state.validate_gradients(grads, owned=True)
        verdict = await state.push(Push(worker=f"w{rank}", rank=rank, base_version=0, grads=valid))
        assert verdict.accepted
    assert state.version == 1
    for name in ("w", "b"):
        # Exactly the float32 update of the upcast gradients: nothing lost beyond the rounding.
        mean = (pushes[0][name].astype(np.float32) + pushes[1][name].astype(np.float32)) / 2
        np.testing.assert_allclose(state.params[name], -0.5 * mean, rtol=1e-6)
        assert state.params[name].dtype == np.float32
    # Parameters go out in the wire dtype, encoded once per version.
    served = decode_frame((await state.encoded_params()).tobytes())
    assert served.header["version"] == 1
    assert all(a.dtype == wire for a in served.arrays.values())
    np.testing.assert_array_equal(served.arrays["w"], to_wire(state.params["w"], dtype))


async def test_fp16_job_refuses_other_16_bit_and_non_finite_pushes() -> None:
    state = shard(workers=1, wire_dtype="float16")
    good = {"w": np.ones((4, 3), np.float16), "b": np.ones(3, np.float16)}
    assert state.validate_gradients(good)  # the job's wire dtype
    assert state.validate_gradients({k: v.astype(np.float32) for k, v in good.items()})
    with pytest.raises(ProtocolError) as info:
        state.validate_gradients({k: to_wire(v, "bfloat16") for k, v in good.items()})
    assert info.value.code is ErrorCode.BAD_DTYPE
    spoiled = {"w": good["w"].copy(), "b": good["b"]}
    spoiled["w"][1, 2] = np.inf
    with pytest.raises(ProtocolError) as info:
        state.validate_gradients(spoiled)
    assert info.value.code is ErrorCode.NOT_FINITE
    # A float32 job does not take 16-bit gradients.
    with pytest.raises(ProtocolError) as info:
        shard(workers=1).validate_gradients(good)
    assert info.value.code is ErrorCode.BAD_DTYPE


@contextlib.asynccontextmanager
async def served_shard(
    state_params: dict[str, np.ndarray], **job: object
) -> AsyncIterator[tuple[str, ShardState, DataPort]]:
    """The real shard app on port 0, handed its job directly (no coordinator); its data port's
    address, state and port."""
    settings = ShardSettings(host="127.0.0.1", port=0, insecure=True)
    config = JobConfig(**{"optimizer": "sgd", "lr": 0.5, "steps": 100, "shards": 1, **job})

    def factory(url: str):
        app = build_app(settings, url)
        app.cleanup_ctx.remove(announce_loop)
        app[SLOT].state = ShardState(config, 0, state_params, app[METRICS])
        app[SLOT].ready.set()
        return app

    async with running_service(factory, settings) as (_, app):
        yield app[DATA_URL][0], app[SLOT].state, app[PORT]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
async def test_16_bit_steps_on_the_data_port_small_and_large(dtype: str) -> None:
    # "big" is over OWN_BUFFER_BYTES even in 16 bits: pushes and replies are received straight
    # into buffers of their own, and one connection carries every request.
    big = OWN_BUFFER_BYTES + 4096
    params = {"small": np.zeros(10, np.float32), "big": np.zeros(big, np.float32)}
    async with served_shard(params, workers=1, wire_dtype=dtype) as (url, _, port):
        client = ShardClient(url, 0, token=None, timeout_s=30.0, attempts=1)
        try:
            expected = {name: np.zeros_like(p) for name, p in params.items()}
            for step in range(3):
                grads = {
                    "small": to_wire(values(10, step), dtype),
                    "big": to_wire(values(big, step), dtype),
                }
                reply = await client.push(
                    worker="w0", rank=0, step=step, base_version=step, grads=grads
                )
                assert reply.status is Status.APPLIED and reply.version == step + 1
                for name in params:
                    expected[name] -= 0.5 * grads[name].astype(np.float32)
                    assert reply.arrays[name].dtype == WIRE_DTYPES[dtype]
                    np.testing.assert_array_equal(
                        reply.arrays[name], to_wire(expected[name], dtype)
                    )
            pulled = await client.pull()
            assert pulled.version == 3
            np.testing.assert_array_equal(pulled.arrays["big"], to_wire(expected["big"], dtype))
            # A push the shard refuses is answered cleanly, on the same connection.
            bad = {"small": grads["small"], "big": grads["big"].copy()}
            bad["big"][-1] = np.nan
            refused = await client.push(worker="w0", rank=0, step=3, base_version=3, grads=bad)
            assert refused.status is ErrorCode.NOT_FINITE
            assert (await client.pull()).version == 3
            assert len(port.connections) == 1
        finally:
            client.close()


def test_frames_of_16_bit_arrays_stay_aligned() -> None:
    arrays = {"a": np.ones(3, np.float16), "b": to_wire(np.ones(5, np.float32), "bfloat16")}
    frame = frame_buffers({"x": 1}, arrays)
    body = np.frombuffer(frame.tobytes(), np.uint8).copy()
    decoded = decode_frame(body)
    for name, array in arrays.items():
        assert decoded.arrays[name].ctypes.data % 2 == 0
        np.testing.assert_array_equal(decoded.arrays[name], array)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
async def test_replies_give_their_frame_back_so_updates_run_in_place(dtype: str) -> None:
    """Once a reply is sent nothing holds its frame: each next update writes the same buffer in
    place instead of a new one (and float32 parameters live in it)."""
    big = OWN_BUFFER_BYTES + 4096
    params = {"big": np.zeros(big, np.float32), "small": np.zeros(10, np.float32)}
    async with served_shard(params, workers=1, wire_dtype=dtype) as (url, state, _):
        client = ShardClient(url, 0, token=None, timeout_s=30.0, attempts=1)
        try:
            addresses = []
            for step in range(5):
                grads = {name: to_wire(values(p.size, step), dtype) for name, p in params.items()}
                reply = await client.push(
                    worker="w0", rank=0, step=step, base_version=step, grads=grads
                )
                assert reply.status is Status.APPLIED and reply.version == step + 1
                del reply
                frame = await state.encoded_params()
                addresses.append(np.frombuffer(frame.buffers[1], np.uint8).ctypes.data)
                in_frame = np.shares_memory(np.frombuffer(frame.buffers[1], np.uint8),
                                            state.params["big"])  # fmt: skip
                assert in_frame == (dtype == "float32")
                del frame
            assert len(set(addresses)) == 1
        finally:
            client.close()

"""A shard's sync and async update rules on its state, with hand-made gradients, no sockets."""

from __future__ import annotations

import asyncio

import numpy as np
from prometheus_client import CollectorRegistry

from ps_server.metrics import ShardMetrics
from ps_server.snapshot import COPIED_BYTES
from ps_server.state import ShardState
from pscluster.messages import Push
from pscluster.protocol import EncodedFrame, ErrorCode, ProtocolError, decode_frame
from pscluster.settings import JobConfig


def make_state(**job: object) -> ShardState:
    config = JobConfig(**{"optimizer": "sgd", "lr": 0.5, "steps": 100, **job})
    params = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    return ShardState(config, 0, params, ShardMetrics(CollectorRegistry()))


def grad(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((3, 2), value, np.float32), "b": np.full(2, value, np.float32)}


async def test_sync_step_averages_n_gradients() -> None:
    state = make_state(workers=2)
    first = await state.push(Push(worker="a", rank=0, base_version=0, grads=grad(1.0)))
    assert first.accepted and state.version == 0  # one of two: still gathering
    second = await state.push(Push(worker="b", rank=1, base_version=0, grads=grad(3.0)))
    assert second.accepted and state.version == 1
    np.testing.assert_allclose(state.params["w"], -0.5 * 2.0)  # lr * mean(1, 3)


async def test_sync_late_and_duplicate_are_refused_and_change_nothing() -> None:
    state = make_state(workers=2)
    await state.push(Push(worker="a", rank=0, base_version=0, grads=grad(1.0)))
    dup = await state.push(Push(worker="a", rank=0, base_version=0, grads=grad(100.0)))
    assert dup.code is ErrorCode.DUPLICATE
    await state.push(Push(worker="b", rank=1, base_version=0, grads=grad(1.0)))
    before = state.params["w"].copy()
    late = await state.push(Push(worker="c", rank=2, base_version=0, grads=grad(100.0)))
    assert late.code is ErrorCode.LATE
    np.testing.assert_array_equal(state.params["w"], before)
    assert state.metrics.tally_dropped["late"] == 1
    assert state.metrics.tally_dropped["duplicate"] == 1
    assert state.metrics.tally_applied == 2


async def test_fewer_live_workers_complete_the_step() -> None:
    state = make_state(workers=3)
    await state.set_members({"a": 0, "b": 1, "c": 2})
    await state.push(Push(worker="a", rank=0, base_version=0, grads=grad(2.0)))
    await state.push(Push(worker="b", rank=1, base_version=0, grads=grad(4.0)))
    assert state.version == 0
    # c dies: the coordinator's new membership completes the step with the two it has.
    await state.set_members({"a": 0, "b": 1})
    assert state.version == 1
    np.testing.assert_allclose(state.params["b"], -0.5 * 3.0)
    unknown = await state.push(Push(worker="c", rank=2, base_version=1, grads=grad(1.0)))
    assert unknown.code is ErrorCode.UNKNOWN_WORKER


async def test_long_poll_wakes_on_the_next_version() -> None:
    state = make_state(workers=1)
    waiter = asyncio.create_task(state.wait_for_version(0, 5.0))
    await asyncio.sleep(0.01)  # a bounded wait that shows the waiter is *not* woken early
    assert not waiter.done()
    await state.push(Push(worker="a", rank=0, base_version=0, grads=grad(1.0)))
    await asyncio.wait_for(waiter, 1.0)
    assert state.version == 1


def big_state() -> ShardState:
    """One parameter of more bytes than ps_server.snapshot copies: its replies borrow the frame."""
    config = JobConfig(optimizer="sgd", lr=0.5, steps=100, workers=1)
    params = {"w": np.zeros(COPIED_BYTES // 4 + 16, np.float32)}
    return ShardState(config, 0, params, ShardMetrics(CollectorRegistry()))


def big_grad(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(COPIED_BYTES // 4 + 16, value, np.float32)}


def payload(frame: EncodedFrame) -> np.ndarray:
    return np.frombuffer(frame.buffers[1], np.uint8)


async def test_a_version_is_encoded_once_and_overwritten_only_when_nobody_holds_it() -> None:
    state = big_state()
    first = await state.encoded_params()
    assert np.shares_memory(payload(first), payload(await state.encoded_params()))  # encoded once
    # A reply still holds version 0: version 1 is written elsewhere and version 0 stays intact.
    await state.push(Push(worker="a", rank=0, base_version=0, grads=big_grad(1.0)))
    second = await state.encoded_params()
    assert not np.shares_memory(payload(first), payload(second))
    old, new = decode_frame(first.tobytes()), decode_frame(second.tobytes())
    assert old.header["version"] == 0 and new.header["version"] == 1
    np.testing.assert_array_equal(old.arrays["w"], 0.0)
    np.testing.assert_array_equal(new.arrays["w"], -0.5)
    # Once nobody holds version 1's frame, the next update runs in it, in place.
    params_before = state.params["w"]
    del first, second
    await state.push(Push(worker="a", rank=0, base_version=1, grads=big_grad(1.0)))
    assert state.params["w"] is params_before
    np.testing.assert_array_equal(state.params["w"], -1.0)
    third = await state.encoded_params()
    assert np.shares_memory(payload(third), state.params["w"])  # the parameters live in it
    decoded = decode_frame(third.tobytes())
    assert decoded.header["version"] == 2
    np.testing.assert_array_equal(decoded.arrays["w"], -1.0)


async def test_a_small_version_is_copied_once_and_updated_in_place() -> None:
    state = make_state(workers=1)
    await state.push(Push(worker="a", rank=0, base_version=0, grads=grad(1.0)))
    # From version 1 the parameters live in their frame.
    first = await state.encoded_params()
    # Every reply of a version shares one copy of its bytes (no loan to count back in).
    assert payload(first).base is payload(await state.encoded_params()).base
    params_before = state.params["w"]
    await state.push(Push(worker="a", rank=0, base_version=1, grads=grad(1.0)))
    # A reply still holding version 1 does not stop version 2 from being written in place...
    assert state.params["w"] is params_before
    second = await state.encoded_params()
    # ... and keeps version 1's bytes.
    old, new = decode_frame(first.tobytes()), decode_frame(second.tobytes())
    assert old.header["version"] == 1 and new.header["version"] == 2
    np.testing.assert_array_equal(old.arrays["w"], -0.5)
    np.testing.assert_array_equal(new.arrays["w"], -1.0)
    np.testing.assert_array_equal(new.arrays["b"], -1.0)


def test_validation_refuses_bad_gradients() -> None:
    state = make_state()
    cases = [
        ({**grad(1.0), "extra": np.zeros(1, np.float32)}, ErrorCode.UNKNOWN_PARAMETER),
        ({"w": grad(1.0)["w"]}, ErrorCode.MISSING_PARAMETER),
        ({**grad(1.0), "b": np.zeros(2, np.float64)}, ErrorCode.BAD_DTYPE),
        ({**grad(1.0), "b": np.zeros(3, np.float32)}, ErrorCode.BAD_SHAPE),
        ({**grad(1.0), "b": np.array([0.0, np.nan], np.float32)}, ErrorCode.NOT_FINITE),
        ({**grad(1.0), "w": np.full((3, 2), np.inf, np.float32)}, ErrorCode.NOT_FINITE),
    ]
    for grads, code in cases:
        try:
            state.validate_gradients(grads)
        except ProtocolError as exc:
            assert exc.code is code
        else:
            raise AssertionError(f"accepted {code}")
    # Huge but finite values overflow a float32 sum; they are still accepted.
    state.validate_gradients({**grad(1.0), "w": np.full((3, 2), 3e38, np.float32)})


async def test_async_applies_lr_times_scale_times_g() -> None:
    state = make_state(mode="async", staleness_policy="inverse", workers=4)
    for _ in range(4):  # advance to version 4 with zero gradients
        await state.push(Push(worker="a", rank=0, base_version=state.version, grads=grad(0.0)))
    before = state.params["w"].copy()
    verdict = await state.push(Push(worker="b", rank=1, base_version=0, grads=grad(2.0)))
    assert verdict.staleness == 4 and verdict.scale == 0.25
    np.testing.assert_allclose(state.params["w"], before - 0.5 * 0.25 * 2.0)


async def test_a_pull_during_an_update_never_sees_half_of_it(monkeypatch) -> None:
    import threading

    import ps_server.state.core as state_module
    from pscluster.protocol import decode_frame

    monkeypatch.setattr(state_module, "OFFLOAD_ELEMENTS", 0)  # update math on a thread
    state = make_state(workers=1)
    halfway, resume = threading.Event(), threading.Event()

    def slow_update(name, span, p, g, scale, out) -> None:
        np.subtract(p, 1.0, out=out)  # "w" is the first half of the update, "b" the second
        if name == "w":
            halfway.set()
            resume.wait(5)

    state.optimizer.update_block = slow_update
    push = asyncio.create_task(
        state.push(Push(worker="a", rank=0, base_version=0, grads=grad(1.0)))
    )
    assert await asyncio.to_thread(halfway.wait, 5)
    snapshot = asyncio.create_task(state.encoded_params())
    await asyncio.sleep(0.05)  # a bounded wait that shows the snapshot does *not* come early
    assert not snapshot.done()  # it waits for the update to finish
    resume.set()
    await push
    frame = decode_frame((await snapshot).tobytes())
    assert frame.header["version"] == 1
    np.testing.assert_array_equal(frame.arrays["w"], -1.0)
    np.testing.assert_array_equal(frame.arrays["b"], -1.0)

"""The sync deadline on a shard's state: a step closes at its deadline once enough gradients are
in, a gradient after it is late, and ``auto`` learns the deadline from recent arrivals."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ps_server.dataplane import DataPlane, ShardSlot
from ps_server.deadline import MARGIN_S, MIN_DURATIONS
from ps_server.metrics import ShardMetrics
from ps_server.state import ShardState
from pscluster.messages import Push
from pscluster.protocol import ErrorCode
from pscluster.settings import JobConfig, ShardSettings


def make_state(**job: object) -> ShardState:
    config = JobConfig(**{"optimizer": "sgd", "lr": 0.5, "steps": 100, "workers": 4, **job})
    params = {"w": np.zeros(3, np.float32)}
    return ShardState(config, 0, params, ShardMetrics(CollectorRegistry()))


def grad(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, value, np.float32)}


async def push(state: ShardState, worker: str, value: float, base: int = 0) -> ErrorCode | None:
    rank = int(worker[1:])
    verdict = await state.push(Push(worker=worker, rank=rank, base_version=base, grads=grad(value)))
    return verdict.code


async def test_step_closes_at_a_fixed_deadline_with_the_gradients_in() -> None:
    state = make_state(deadline="0.05")
    started = time.perf_counter()
    assert await push(state, "w0", 1.0) is None
    assert await push(state, "w1", 3.0) is None
    assert state.version == 0
    await state.wait_for_version(0, timeout_s=5.0)
    waited = time.perf_counter() - started
    assert state.version == 1
    assert waited >= 0.05
    np.testing.assert_allclose(state.params["w"], -0.5 * 2.0)  # lr * mean(1, 3)
    assert await push(state, "w2", 100.0) is ErrorCode.LATE  # after the deadline: dropped
    np.testing.assert_allclose(state.params["w"], -1.0)
    summary = state.snapshot()
    assert summary["deadline_seconds"] == 0.05
    assert summary["steps_closed_early"] == 1
    assert summary["gradients_per_step"] == 2.0
    assert state.metrics.tally_dropped["late"] == 1
    assert len(state._offsets) == 2  # w1 on time, w2 late: both measured


async def test_past_the_deadline_a_step_waits_for_min_gradients() -> None:
    state = make_state(deadline="0.02", min_gradients=2)
    assert await push(state, "w0", 1.0) is None
    # A bounded wait that shows the step does NOT close with one gradient of two needed.
    await state.wait_for_version(0, timeout_s=0.1)
    assert state.version == 0
    assert await push(state, "w1", 1.0) is None  # the second closes it at once
    assert state.version == 1
    assert state.snapshot()["steps_closed_early"] == 1


async def test_all_n_in_before_the_deadline_is_not_closed_early() -> None:
    state = make_state(deadline="5")
    for i in range(4):
        assert await push(state, f"w{i}", 1.0) is None
    assert state.version == 1
    assert state.snapshot()["steps_closed_early"] == 0
    assert state.snapshot()["gradients_per_step"] == 4.0


async def test_no_deadline_waits_for_n() -> None:
    state = make_state()
    for i in range(3):
        await push(state, f"w{i}", 1.0)
    await state.wait_for_version(0, timeout_s=0.1)  # bounded: it does NOT close
    assert state.version == 0
    assert state.snapshot()["deadline_seconds"] is None


async def test_auto_deadline_learns_from_recent_arrivals_and_cuts_the_straggler() -> None:
    # min_gradients 3: under load the learned deadline (about 2 ms) may pass between pushes,
    # and the step must not close with two of the three.
    state = make_state(deadline="auto", min_gradients=3)
    # Three steps in which all four arrive at once: 9 offsets of about 0 s, the first 8 of
    # them before step 3 opens (no deadline until then, so nothing can be late).
    for version in range(3):
        for i in range(4):
            assert await push(state, f"w{i}", 1.0, base=version) is None
    assert state.version == 3 and state.snapshot()["steps_closed_early"] == 0
    # Now w3 is a straggler: the step closes at the learned deadline with three gradients.
    started = time.perf_counter()
    for i in range(3):
        assert await push(state, f"w{i}", 1.0, base=3) is None
    await state.wait_for_version(3, timeout_s=5.0)
    assert state.version == 4
    deadline = state.snapshot()["deadline_seconds"]
    assert deadline == pytest.approx(MARGIN_S, abs=0.01)
    assert time.perf_counter() - started < 1.0
    assert state.snapshot()["steps_closed_early"] == 1
    assert await push(state, "w3", 1.0, base=3) is ErrorCode.LATE


async def test_a_step_closed_before_its_deadline_cancels_its_timer() -> None:
    state = make_state(deadline="0.05", workers=2, min_gradients=1)
    await push(state, "w0", 1.0)
    timer = state._deadline_timer
    assert timer is not None and not timer.cancelled()
    await push(state, "w1", 1.0)  # closes step 0 before its deadline
    assert state.version == 1
    assert timer.cancelled()  # so it cannot close step 1 early
    await push(state, "w0", 1.0, base=1)
    assert state._deadline_timer is not None and state._deadline_timer is not timer
    await state.wait_for_version(1, timeout_s=5.0)
    assert state.version == 2


async def test_a_dropped_worker_is_not_waited_for_until_it_is_back_in_phase() -> None:
    state = make_state(deadline="0.3")
    await state.set_members({f"w{i}": i for i in range(4)})
    for i in range(4):  # step 0: all four
        assert await push(state, f"w{i}", 1.0) is None
    for i in range(3):  # step 1: w3 is slow; the step closes at its deadline without it
        assert await push(state, f"w{i}", 1.0, base=1) is None
    assert state.version == 1
    await state.wait_for_version(1, timeout_s=5.0)
    assert state.version == 2
    offsets = len(state._offsets)
    # Step 2: w3 is still computing its step-1 gradient. The step closes with the third push,
    # not at its deadline: checked at once, well before the 0.3 s are up.
    for i in range(3):
        assert await push(state, f"w{i}", 2.0, base=2) is None
    assert state.version == 3
    np.testing.assert_allclose(state.params["w"], -0.5 * 4.0)  # three steps of lr * mean 1, 1, 2
    assert len(state._offsets) == offsets + 2  # w1 and w2, in phase
    # w3's step-1 gradient arrives during step 3: late (measured: it was in phase for step 1),
    # answered with version 3 after step 3 opened. Its step-3 gradient still counts if it comes
    # before the step closes, but its offset (when it started, not how fast it is) is no sample.
    assert await push(state, "w0", 1.0, base=3) is None
    assert await push(state, "w3", 9.0, base=1) is ErrorCode.LATE
    assert len(state._offsets) == offsets + 3
    assert await push(state, "w3", 1.0, base=3) is None
    assert len(state._offsets) == offsets + 3
    assert await push(state, "w1", 1.0, base=3) is None
    assert state.version == 3  # w2 is in phase: waited for
    assert await push(state, "w2", 1.0, base=3) is None
    assert state.version == 4 and state.snapshot()["gradients_per_step"] == 3.5  # 4, 3, 3, 4
    # Step 4: w3 was answered by step 3's close, in phase again: three pushes do not close it.
    for i in range(3):
        assert await push(state, f"w{i}", 1.0, base=4) is None
    assert state.version == 4
    assert await push(state, "w3", 1.0, base=4) is None
    assert state.version == 5
    assert state.snapshot()["steps_closed_early"] == 2  # steps 1 and 2


async def test_a_worker_expected_after_the_deadline_is_not_waited_for() -> None:
    """w3 computes for 70 ms where the deadline is 50 ms: once this shard has seen that a few
    times, a step closes as soon as the three others are in, not at its deadline."""
    state = make_state(deadline="0.05", min_gradients=2)
    await state.set_members({f"w{i}": i for i in range(4)})
    slow_s = 0.07
    for version in range(MIN_DURATIONS + 1):
        for i in range(3):
            assert await push(state, f"w{i}", 1.0, base=version) is None
        # Too few of w3's compute times yet: the step waits for it, up to its deadline.
        assert state.version == version
        await asyncio.sleep(slow_s)  # w3 at work; the deadline passes meanwhile
        assert state.version == version + 1
        # w3's gradient is late; its reply (version + 1, no step open) starts its next one.
        assert await push(state, "w3", 1.0, base=version) is ErrorCode.LATE
    # w3 has taken about 70 ms for each of its last MIN_DURATIONS steps: not awaited now.
    for i in range(3):
        assert await push(state, f"w{i}", 1.0, base=MIN_DURATIONS + 1) is None
    assert state.version == MIN_DURATIONS + 2  # closed by the third push, no deadline waited
    assert state.snapshot()["steps_closed_early"] == MIN_DURATIONS + 2
    assert state.metrics.tally_dropped["late"] == MIN_DURATIONS + 1


async def test_the_reply_to_a_late_push_waits_for_the_step_in_progress() -> None:
    """With a deadline, a worker whose push missed its step starts the next step with the
    others: its reply is held until the step that has opened closes, and carries its result."""
    state = make_state(deadline="5", workers=2, min_gradients=2)
    slot = ShardSlot()
    slot.state = state
    settings = ShardSettings(insecure=True)
    plane = DataPlane(slot, settings, state.metrics)
    await state.set_members({"w0": 0, "w1": 1})
    assert await push(state, "w0", 1.0) is None
    assert await push(state, "w1", 1.0) is None
    assert state.version == 1
    assert await push(state, "w0", 1.0, base=1) is None  # step 1 opens
    # w1's second push for version 0 (say, a delayed duplicate): late, held for step 1.
    late = asyncio.ensure_future(
        plane.push(Push(worker="w1", rank=1, base_version=0, grads=grad(7.0)), nbytes=12)
    )
    # A bounded wait that shows the reply is NOT sent while step 1 is open.
    await asyncio.sleep(0.05)
    assert not late.done()
    assert await push(state, "w1", 3.0, base=1) is None  # closes step 1
    answer = await asyncio.wait_for(late, 5.0)
    assert answer.status is ErrorCode.LATE
    assert state.version == 2
    np.testing.assert_allclose(state.params["w"], -0.5 * (1.0 + 2.0))  # the 7 never counted
    # Its reply was sent with step 1's close: in phase for step 2, which waits for it.
    assert await push(state, "w0", 1.0, base=2) is None
    assert state._awaited() == 1

"""SSP's clock gate on a shard's state: a worker S steps ahead of the slowest waits, a dead
worker leaving the membership releases it, a joining worker starts at the slowest clock."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from ps_server.metrics import ShardMetrics
from ps_server.state import ShardState
from pscluster.messages import Push
from pscluster.settings import JobConfig


def make_state(bound: int) -> ShardState:
    config = JobConfig(mode="ssp", ssp_bound=bound, optimizer="sgd", lr=0.1, steps=1000)
    return ShardState(config, 0, {"w": np.zeros(2, np.float32)}, ShardMetrics(CollectorRegistry()))


async def step(state: ShardState, worker: str) -> bool:
    """One push from ``worker`` and whether it may start its next step at once."""
    verdict = await state.push(
        Push(
            worker=worker, rank=int(worker[1:]), base_version=state.version, grads={"w": np.ones(2)}
        )
    )
    assert verdict.accepted
    return await state.wait_for_start(worker, timeout_s=0.0)


async def test_a_worker_runs_at_most_s_steps_ahead_then_waits_for_the_slowest() -> None:
    state = make_state(bound=2)
    await state.set_members({"w0": 0, "w1": 1})
    assert state.clocks == {"w0": 0, "w1": 0}
    assert await step(state, "w0")  # clock 1, gap 1
    assert await step(state, "w0")  # clock 2, gap 2
    assert not await step(state, "w0")  # clock 3: gap 3 > 2, the gate is closed
    assert state.version == 3  # its gradients were applied, as in async
    assert await step(state, "w1")  # the slow one catches up by one: w0 may go
    assert await state.wait_for_start("w0", timeout_s=0.0)
    assert state.snapshot()["max_clock_gap"] == 2


async def test_bound_zero_is_lockstep() -> None:
    state = make_state(bound=0)
    await state.set_members({"w0": 0, "w1": 1, "w2": 2})
    assert not await step(state, "w0")
    assert not await step(state, "w1")
    assert await step(state, "w2")  # the last of the round opens the gate for everyone
    assert await state.wait_for_start("w0", timeout_s=0.0)
    assert state.snapshot()["max_clock_gap"] == 0


async def test_a_dead_worker_leaving_the_membership_opens_the_gate() -> None:
    state = make_state(bound=1)
    await state.set_members({"w0": 0, "w1": 1})
    await step(state, "w0")
    assert not await step(state, "w0")
    await state.set_members({"w0": 0})  # w1's lease expired
    assert await state.wait_for_start("w0", timeout_s=0.0)


async def test_a_joining_worker_starts_at_the_slowest_live_clock() -> None:
    state = make_state(bound=4)
    await state.set_members({"w0": 0, "w1": 1})
    for _ in range(3):
        await step(state, "w0")
    await step(state, "w1")
    await state.set_members({"w0": 0, "w1": 1, "w2": 2})
    assert state.clocks["w2"] == 1  # w1's: nobody is stalled by the newcomer
    assert await state.wait_for_start("w0", timeout_s=0.0)
    assert state.snapshot()["clocks"] == [1, 3]


async def test_a_closed_gate_holds_until_the_timeout() -> None:
    state = make_state(bound=0)
    await state.set_members({"w0": 0, "w1": 1})
    await step(state, "w0")
    # A bounded wait that shows the gate does NOT open while w1 has not pushed.
    assert not await state.wait_for_start("w0", timeout_s=0.05)


async def test_nobody_starts_a_second_step_before_the_membership_is_known() -> None:
    state = make_state(bound=2)
    assert not await step(state, "w0")  # the shard has not heard who else is live
    await state.set_members({"w0": 0, "w1": 1})
    assert state.clocks == {"w0": 1, "w1": 1}  # w1 joins at the slowest known clock
    assert await state.wait_for_start("w0", timeout_s=0.0)

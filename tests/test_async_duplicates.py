"""Async and ssp pushes are idempotent: a retry of an applied push (its reply lost, the same
worker, step and base version) is a duplicate, not a second update, as sync's already is."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from ps_server.metrics import ShardMetrics
from ps_server.state import ShardState
from pscluster.messages import Push
from pscluster.protocol import ErrorCode
from pscluster.settings import JobConfig

LR = 0.5


def make_state(mode: str) -> ShardState:
    config = JobConfig(mode=mode, optimizer="sgd", lr=LR, steps=100, workers=2, ssp_bound=1)
    return ShardState(config, 0, {"w": np.zeros(3, np.float32)}, ShardMetrics(CollectorRegistry()))


async def push(state: ShardState, worker: str, step: int, base: int) -> ErrorCode | None:
    grads = {"w": np.full(3, 1.0, np.float32)}
    message = Push(worker=worker, rank=int(worker[1:]), step=step, base_version=base, grads=grads)
    return (await state.push(message)).code


async def test_async_retry_of_an_applied_push_is_a_duplicate() -> None:
    state = make_state("async")
    assert await push(state, "w0", step=0, base=0) is None
    assert await push(state, "w0", step=0, base=0) is ErrorCode.DUPLICATE  # the retry
    assert state.version == 1
    np.testing.assert_allclose(state.params["w"], -LR)  # applied once
    # The worker's next step, and another worker's push of the same step and base, both apply.
    assert await push(state, "w0", step=1, base=1) is None
    assert await push(state, "w1", step=0, base=0) is None
    assert state.version == 3
    np.testing.assert_allclose(state.params["w"], -3 * LR)
    assert state.metrics.tally_dropped["duplicate"] == 1


async def test_ssp_retry_does_not_move_the_clock_twice() -> None:
    state = make_state("ssp")
    await state.set_members({"w0": 0, "w1": 1})
    assert await push(state, "w0", step=0, base=0) is None
    clocks = state.clock_summary()
    assert await push(state, "w0", step=0, base=0) is ErrorCode.DUPLICATE
    assert state.clock_summary() == clocks
    assert state.version == 1
    np.testing.assert_allclose(state.params["w"], -LR)

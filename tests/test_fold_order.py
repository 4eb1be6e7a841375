"""A sync step's sum is folded in rank order: every arrival order gives bit-identical parameters
and optimizer state, for each optimizer, and the rule itself is a pure function."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ps_server.fold_order import fold_sequence, may_fold_now
from ps_server.metrics import ShardMetrics
from ps_server.state import ShardState
from pscluster.messages import Push
from pscluster.settings import JobConfig

WORKERS = 4


def test_may_fold_now() -> None:
    members = [0, 1, 2, 3]
    assert may_fold_now(0, None, members)
    assert not may_fold_now(1, None, members)  # rank 0 is still to come
    assert may_fold_now(1, 0, members) and not may_fold_now(2, 0, members)
    assert not may_fold_now(0, 0, members)  # never twice, never backwards
    assert may_fold_now(2, 0, [0, 2, 3])  # rank 1 is no member: nobody to wait for
    assert may_fold_now(5, None, [])  # no membership yet
    assert fold_sequence({3, 1, 2}) == [1, 2, 3]


def make_state(optimizer: str) -> ShardState:
    config = JobConfig(optimizer=optimizer, lr=0.05, steps=100, workers=WORKERS)
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((37, 5)).astype(np.float32), "b": np.zeros(5, np.float32)}
    return ShardState(config, 0, params, ShardMetrics(CollectorRegistry()))


def gradients(step: int, rank: int) -> dict[str, np.ndarray]:
    # Values of very different magnitudes, so float addition order shows in the last bits.
    rng = np.random.default_rng(1000 * step + rank)
    scale = 10.0 ** rng.integers(-6, 4, size=(37, 5))
    return {
        "w": (rng.standard_normal((37, 5)) * scale).astype(np.float32),
        "b": (rng.standard_normal(5) * 1e3).astype(np.float32),
    }


async def run(optimizer: str, orders: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
    state = make_state(optimizer)
    await state.set_members({f"w{r}": r for r in range(WORKERS)})
    for step, order in enumerate(orders):
        for rank in order:
            verdict = await state.push(
                Push(worker=f"w{rank}", rank=rank, base_version=step, grads=gradients(step, rank))
            )
            assert verdict.accepted
        assert state.version == step + 1
    return {**state.params, **{f"opt/{k}": v for k, v in state.optimizer.state().items()}}


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
async def test_every_arrival_order_gives_the_same_bits(optimizer: str) -> None:
    perms = list(itertools.permutations(range(WORKERS)))
    reference = await run(optimizer, [perms[0]] * 3)
    different = 0
    for i in range(0, len(perms), 5):
        orders = [perms[i], perms[(i * 7 + 3) % len(perms)], perms[-1 - i]]
        result = await run(optimizer, orders)
        for key, value in reference.items():
            assert value.tobytes() == result[key].tobytes(), (key, orders)
    # The test can fail: summing in arrival order does differ in the last bits.
    for order in perms[1:]:
        total = np.zeros((37, 5), np.float32)
        for rank in order:
            total += gradients(0, rank)["w"]
        ordered = np.zeros((37, 5), np.float32)
        for rank in range(WORKERS):
            ordered += gradients(0, rank)["w"]
        different += int(total.tobytes() != ordered.tobytes())
    assert different > 0


async def test_a_held_gradient_waits_only_for_the_ranks_below_it() -> None:
    state = ShardState(
        JobConfig(optimizer="sgd", lr=1.0, steps=10, workers=5),
        0,
        {"w": np.zeros(2, np.float32)},
        ShardMetrics(CollectorRegistry()),
    )
    await state.set_members({f"w{r}": r for r in range(5)})

    async def push(rank: int) -> None:
        grads = {"w": np.full(2, float(rank + 1), np.float32)}
        assert (
            await state.push(Push(worker=f"w{rank}", rank=rank, base_version=0, grads=grads))
        ).accepted

    for rank in (3, 2):
        await push(rank)
    assert sorted(state._held) == [2, 3] and state._last_folded is None
    await push(0)  # folded at once; 2 and 3 still wait for 1
    assert state._last_folded == 0 and sorted(state._held) == [2, 3]
    await push(1)  # 1, then the held 2 and 3 follow it
    assert state._last_folded == 3 and not state._held
    await push(4)
    assert state.version == 1
    np.testing.assert_allclose(state.params["w"], -3.0)  # lr * mean(1..5)


async def test_a_checkpoint_keeps_the_held_gradients(tmp_path) -> None:
    from ps_server.checkpoint import CheckpointStore

    states = [make_state("adam"), make_state("adam")]
    members = {f"w{r}": r for r in range(WORKERS)}
    await states[0].set_members(members)
    for rank in (2, 0):  # 0 folded, 2 held (waiting for 1)
        await states[0].push(
            Push(worker=f"w{rank}", rank=rank, base_version=0, grads=gradients(0, rank))
        )
    assert sorted(states[0]._held) == [2] and states[0]._last_folded == 0
    store = CheckpointStore(tmp_path, 0)
    store.write(*await states[0].checkpoint_body())
    states[1].restore(store.newest_valid())
    await states[1].set_members(members)
    assert sorted(states[1]._held) == [2] and states[1]._last_folded == 0
    for state in states:
        for rank in (3, 1):
            verdict = await state.push(
                Push(worker=f"w{rank}", rank=rank, base_version=0, grads=gradients(0, rank))
            )
            assert verdict.accepted
        assert state.version == 1
    for key in states[0].params:
        assert states[0].params[key].tobytes() == states[1].params[key].tobytes()

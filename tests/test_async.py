"""Async mode: stale-gradient control, warmup, no lost update under concurrency, and training.

The shard-level tests drive a ``ShardState`` with scripted pushes (the delays are a schedule, so
every staleness is known); the cluster tests run the real services in-process on 127.0.0.1 and
record every async decision the shards make.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import ps_server.dataplane as dataplane
import ps_server.state.core as state_core
import ps_server.state.shard as shard_state
from ps_server.app import SLOT
from ps_server.metrics import ShardMetrics
from ps_server.rules import Verdict
from ps_server.state import ShardState
from pscluster.messages import Push
from pscluster.protocol import ErrorCode
from pscluster.settings import JobConfig
from tests.cluster import TOKEN, local_cluster
from worker.shard_client import ShardClient

LR = 0.5


def make_state(**job: Any) -> ShardState:
    config = JobConfig(**{"mode": "async", "optimizer": "sgd", "lr": LR, "steps": 1000, **job})
    rng = np.random.default_rng(0)
    params = {
        "w": rng.standard_normal((3, 2)).astype(np.float32),
        "b": rng.standard_normal(2).astype(np.float32),
    }
    return ShardState(config, 0, params, ShardMetrics(CollectorRegistry()))


def grad(value: float) -> dict[str, np.ndarray]:
    return {
        "w": np.full((3, 2), value, np.float32) * np.arange(1, 7, dtype=np.float32).reshape(3, 2),
        "b": np.full(2, -value, np.float32),
    }


def expected_scale(staleness: int, policy: str) -> float:
    """The issue's definitions, written out independently of ps_server.rules."""
    if policy == "inverse":
        return 1.0 / staleness if staleness >= 1 else 1.0
    if policy == "inverse_plus_one":
        return 1.0 / (1.0 + staleness)
    return 1.0


def sample(state: ShardState, name: str, **labels: str) -> float:
    value = state.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def applied_by_rank(state: ShardState, ranks: range) -> list[float]:
    return [sample(state, "ps_gradients_applied_total", rank=str(r)) for r in ranks]


def staleness_over(state: ShardState, bound: int) -> float:
    """Observations in the shard's staleness histogram above ``bound`` (a bucket edge)."""
    total = sample(state, "ps_gradient_staleness_count")
    return total - sample(state, "ps_gradient_staleness_bucket", le=f"{float(bound)}")


# --- one shard, scripted pushes --------------------------------------------------------------


@pytest.mark.parametrize("policy", ["none", "inverse", "inverse_plus_one"])
@pytest.mark.parametrize("staleness", [0, 1, 2, 5, 9])
@pytest.mark.parametrize("divide", [False, True])
async def test_crafted_gradient_moves_params_by_lr_scale_g(policy, staleness, divide) -> None:
    state = make_state(staleness_policy=policy, lr_divide_by_workers=divide, workers=4)
    for _ in range(staleness):  # other workers' updates, with zero gradients: params unchanged
        await state.push(Push(worker="other", rank=0, base_version=state.version, grads=grad(0.0)))
    before = {k: p.copy() for k, p in state.params.items()}
    g = grad(1.5)
    verdict = await state.push(Push(worker="me", rank=1, base_version=0, grads=g))
    assert verdict.accepted and verdict.staleness == staleness
    lr = LR / 4 if divide else LR
    for key, p in state.params.items():
        step = lr * expected_scale(staleness, policy) * g[key].astype(np.float64)
        np.testing.assert_allclose(before[key] - p, step, rtol=1e-6, atol=1e-7)
    assert state.version == staleness + 1


def schedule(delays: list[int], ticks: int) -> list[int]:
    """Who pushes when, for workers whose steps take ``delays[w]`` ticks: worker ids in order.

    Each worker computes from the version it last saw; the shard's answers fix the staleness.
    """
    pushes = sorted(
        (tick, worker) for worker, delay in enumerate(delays) for tick in range(delay, ticks, delay)
    )
    return [worker for _, worker in pushes]


@pytest.mark.parametrize(
    ("max_staleness", "policy", "divide"),
    [(2, "none", False), (3, "inverse", True), (0, "inverse_plus_one", False)],
)
async def test_dropped_equals_pushes_staler_than_the_bound(max_staleness, policy, divide) -> None:
    """Four workers, one five times slower; every push is judged on its real staleness."""
    state = make_state(
        max_staleness=max_staleness,
        staleness_policy=policy,
        lr_divide_by_workers=divide,
        workers=4,
    )
    init = {k: p.astype(np.float64) for k, p in state.params.items()}
    expected = {k: p.copy() for k, p in init.items()}
    seen = [0, 0, 0, 0]  # the version each worker computes its next gradient from
    over_bound = 0
    lr = LR / 4 if divide else LR
    for n, worker in enumerate(schedule([1, 1, 1, 5], 60)):
        g = grad(0.01 * (n % 7 + 1))
        arrival = state.version
        staleness = arrival - seen[worker]
        verdict = await state.push(
            Push(worker=f"w{worker}", rank=worker, base_version=seen[worker], grads=g)
        )
        assert verdict.staleness == staleness
        if staleness > max_staleness:
            over_bound += 1
            assert verdict.code is ErrorCode.STALE
            assert state.version == arrival  # refused: nothing changed
        else:
            assert verdict.accepted and state.version == arrival + 1
            for key in expected:
                expected[key] -= lr * expected_scale(staleness, policy) * g[key]
        seen[worker] = state.version  # the reply carries the current parameters
    assert over_bound > 0  # the slow worker's pushes were stale: the bound was exercised
    assert state.metrics.tally_dropped["stale"] == over_bound
    assert sample(state, "ps_gradients_dropped_total", reason="stale") == over_bound
    assert staleness_over(state, max_staleness) == over_bound
    for key, p in state.params.items():
        np.testing.assert_allclose(p, expected[key], rtol=1e-5, atol=1e-6)


async def test_warmup_applies_only_rank_0_then_everyone() -> None:
    warmup = 6
    state = make_state(warmup_steps=warmup, workers=4)
    # The coordinator's membership decides the rank, not what a push claims.
    await state.set_members({"w0": 0, "w1": 1, "w2": 2, "w3": 3})
    liar = await state.push(Push(worker="w2", rank=0, base_version=0, grads=grad(1.0)))
    assert liar.code is ErrorCode.WARMUP
    refused = 1
    while state.version < warmup:
        for rank in range(4):
            verdict = await state.push(
                Push(worker=f"w{rank}", rank=rank, base_version=state.version, grads=grad(0.1))
            )
            assert verdict.accepted is (rank == 0)
            if rank:
                assert verdict.code is ErrorCode.WARMUP
                refused += 1
            if state.version == warmup:
                break
    assert applied_by_rank(state, range(4)) == [warmup, 0, 0, 0]
    assert state.metrics.tally_dropped["warmup"] == refused
    assert sample(state, "ps_gradients_dropped_total", reason="warmup") == refused
    # Warmup is over: every rank's gradient is applied.
    for rank in range(4):
        verdict = await state.push(
            Push(worker=f"w{rank}", rank=rank, base_version=state.version, grads=grad(0.1))
        )
        assert verdict.accepted
    assert applied_by_rank(state, range(4)) == [warmup + 1, 1, 1, 1]
    assert state.metrics.tally_dropped["warmup"] == refused


# --- the real services ----------------------------------------------------------------------


class DecisionLog:
    """Records every async decision the shards make (arrival version, rank, verdict)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entries: list[tuple[int, int, Verdict]] = []
        judge = shard_state.judge_async_push

        def recording(**kwargs: Any) -> Verdict:
            verdict = judge(**kwargs)
            self.entries.append((kwargs["version"], kwargs["rank"], verdict))
            return verdict

        monkeypatch.setattr(shard_state, "judge_async_push", recording)


async def test_no_lost_update_under_200_concurrent_pushes(monkeypatch) -> None:
    """200 pushes at once on 8 connections to one shard, with the math on a thread: each is
    applied at its own version, and the parameters end at init - lr * sum(scale * g), to float
    tolerance."""
    monkeypatch.setattr(state_core, "OFFLOAD_ELEMENTS", 1 << 16)
    monkeypatch.setattr(dataplane, "OFFLOAD_ELEMENTS", 1 << 16)
    job = {
        "shards": 1, "workers": 4, "mode": "async", "steps": 10_000, "model": "mlp",
        "hidden": "1024", "dataset": "digits", "optimizer": "sgd", "lr": LR,
        "staleness_policy": "inverse_plus_one", "eval_every": 100_000,
        # No worker registers: a long lease keeps the coordinator from announcing an empty
        # membership, so the shard accepts pushes from any worker id.
        "heartbeat_lease_s": 600.0,
    }  # fmt: skip
    rng = np.random.default_rng(42)
    n_pushes, pre = 200, 40
    async with local_cluster(job) as cluster:
        slot = cluster.shard_apps[0][SLOT]
        await asyncio.wait_for(slot.ready.wait(), 10.0)
        state = slot.state
        assert state is not None
        # Big enough that the shard runs the update math on a thread, off the event loop.
        assert sum(p.size for p in state.params.values()) >= state_core.OFFLOAD_ELEMENTS
        # One connection per worker id: 8 pushes in flight at the shard at once.
        clients = [
            ShardClient(cluster.data_urls[0], 0, token=TOKEN, timeout_s=30.0, attempts=3)
            for _ in range(8)
        ]
        client = clients[0]
        init = {k: v.astype(np.float64) for k, v in (await client.pull()).arrays.items()}
        zeros = {k: np.zeros(v.shape, np.float32) for k, v in init.items()}
        # Advance to version 40 one push at a time, so the burst can carry older base versions.
        for step in range(pre):
            reply = await client.push(
                worker="warm", rank=0, step=step, base_version=step, grads=zeros, want_params=False
            )
            assert reply.status == "applied"
        # Push i carries a one-hot tag in b1[i], which records its scale 1/(1 + staleness),
        # and a dense random part in the other arrays.
        bases = rng.integers(0, pre + 1, n_pushes)
        grads = []
        for i in range(n_pushes):
            g = {
                k: (rng.standard_normal(v.shape) * 0.01).astype(np.float32)
                for k, v in init.items()
                if k != "b1"
            }
            g["b1"] = np.zeros(init["b1"].shape, np.float32)
            g["b1"][i] = 1.0
            grads.append(g)
        replies = await asyncio.gather(*(
            clients[i % 8].push(worker=f"w{i % 8}", rank=i % 8, step=i, base_version=int(bases[i]),
                        grads=grads[i], want_params=False)
            for i in range(n_pushes)
        ))  # fmt: skip
        assert [r.status for r in replies] == ["applied"] * n_pushes
        final = (await client.pull()).arrays
        for each in clients:
            each.close()
    assert state.version == pre + n_pushes
    assert state.metrics.tally_applied == pre + n_pushes
    # Each push's scale tells the version it was applied at: all 200 are distinct, so no two
    # updates were interleaved and none was lost.
    scales = (init["b1"][:n_pushes] - final["b1"][:n_pushes].astype(np.float64)) / LR
    assert (scales > 0).all(), f"updates lost: pushes {np.flatnonzero(scales <= 0).tolist()}"
    staleness = 1.0 / scales - 1.0
    np.testing.assert_allclose(staleness, np.round(staleness), atol=1e-2)
    applied_at = np.round(staleness).astype(int) + bases
    assert sorted(applied_at.tolist()) == list(range(pre, pre + n_pushes))
    np.testing.assert_array_equal(final["b1"][n_pushes:], init["b1"][n_pushes:])
    for key in ("w1", "w2", "b2"):
        expected = init[key] - LR * sum(s * g[key] for s, g in zip(scales, grads, strict=True))
        np.testing.assert_allclose(final[key], expected, rtol=1e-5, atol=2e-6)


def worker_pushes(cluster: Any, status: str) -> int:
    return sum(s.metrics.push_tally.get(status, 0) for s in cluster.worker_services())


async def test_stale_gradients_of_a_slow_worker_are_dropped(monkeypatch) -> None:
    """A real cluster, one worker eight times slower: exactly its too-stale pushes are dropped."""
    bound = 3
    log = DecisionLog(monkeypatch)
    job = {
        "shards": 2, "workers": 4, "mode": "async", "steps": 240, "model": "mlp", "hidden": "32",
        "dataset": "digits", "optimizer": "sgd", "lr": 0.1, "max_staleness": bound,
        "eval_every": 100_000,
    }  # fmt: skip
    slow = {"delay": "fixed", "delay_s": 0.005, "delay_factor": 8.0}
    async with local_cluster(job, workers=[slow, {}, {}, {}]) as cluster:
        await cluster.wait_done(30.0)
        states = cluster.shard_states()
        over = sum(1 for _, _, verdict in log.entries if verdict.staleness > bound)
        stale = sum(1 for _, _, verdict in log.entries if verdict.code is ErrorCode.STALE)
        assert stale == over > 0
        assert sum(s.metrics.tally_dropped["stale"] for s in states) == over
        assert sum(staleness_over(s, bound) for s in states) == over
        assert worker_pushes(cluster, "stale") == over
        # The slow worker's pushes are the stale ones: nearly all of them are dropped.
        slow_rank = cluster.worker_services()[0].rank
        slow = [v for _, r, v in log.entries if r == slow_rank and v.code is not ErrorCode.DONE]
        fast = [v for _, r, v in log.entries if r != slow_rank and v.code is not ErrorCode.DONE]
        slow_dropped = sum(1 for v in slow if v.code is ErrorCode.STALE) / len(slow)
        fast_dropped = sum(1 for v in fast if v.code is ErrorCode.STALE) / len(fast)
        assert slow_dropped >= 0.8 and fast_dropped < 0.2, (slow_dropped, fast_dropped)
        assert all(s.version == 240 for s in states)


async def test_warmup_in_a_cluster_only_rank_0_trains_then_all_join(monkeypatch) -> None:
    warmup = 25
    log = DecisionLog(monkeypatch)
    job = {
        "shards": 2, "workers": 4, "mode": "async", "steps": 120, "model": "mlp", "hidden": "32",
        "dataset": "digits", "optimizer": "sgd", "lr": 0.1, "warmup_steps": warmup,
        "eval_every": 100_000,
    }  # fmt: skip
    async with local_cluster(job, workers=[{}, {}, {}, {}]) as cluster:
        await cluster.wait_done(30.0)
        applied = [(v, r) for v, r, verdict in log.entries if verdict.accepted]
        assert len(applied) == 2 * 120
        # Per shard, the first W updates are all rank 0's; then every rank joins.
        assert sorted(r for v, r in applied if v < warmup) == [0] * (2 * warmup)
        for state in cluster.shard_states():
            per_rank = applied_by_rank(state, range(4))
            assert per_rank[0] >= warmup and all(n > 0 for n in per_rank[1:]), per_rank
            assert sum(per_rank) == 120
        # The others waited instead of being refused.
        assert worker_pushes(cluster, ErrorCode.WARMUP.value) == 0


async def test_async_training_on_digits_reaches_93_percent() -> None:
    job = {
        "shards": 2, "workers": 4, "mode": "async", "steps": 800, "model": "mlp", "hidden": "64",
        "dataset": "digits", "optimizer": "sgd", "lr": 0.2, "seed": 0, "eval_every": 1000,
    }  # fmt: skip
    async with local_cluster(job, workers=[{}, {}, {}, {}]) as cluster:
        status = await cluster.wait_done(60.0)
        for state in cluster.shard_states():
            per_rank = applied_by_rank(state, range(4))
            assert sum(per_rank) == 800 and min(per_rank) > 0, per_rank
    assert status["history"][-1]["step"] == 800
    assert status["accuracy"] >= 0.93, status["history"]

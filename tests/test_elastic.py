"""Elastic workers: a worker joins a running job at any time. In sync mode one beyond N + k
joins as a spare (the steps still average exactly N gradients, the first N in); in async mode it
trains. ``/status`` and the coordinator's metrics count the joins and leaves."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from pscluster.client import make_session
from tests.cluster import local_cluster

N, SHARDS = 2, 2
JOB = {
    "shards": SHARDS,
    "workers": N,
    "spares": 0,
    "model": "mlp",
    "hidden": "16",
    "dataset": "digits",
    "data_mode": "shard",  # the newcomer, rank 2 of a world of 2, walks part 0 in its own order
    "batch_size": 16,
    "lr": 0.1,
    "seed": 1,
    "eval_every": 1000,
}
DELAY = {"delay": "fixed", "delay_s": 0.01}


async def wait_for(probe, what: str, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    """Poll ``probe`` (bounded in time) until it returns a true value."""
    deadline = time.monotonic() + timeout_s
    while not (value := await probe()):
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.05)
    return value


@pytest.mark.parametrize(("mode", "steps"), [("sync", 60), ("async", 120)])
async def test_a_worker_joins_a_running_job(mode: str, steps: int) -> None:
    async with local_cluster({**JOB, "mode": mode, "steps": steps}, [DELAY, DELAY]) as cluster:
        async with make_session(5.0) as http:

            async def status() -> dict:
                return await cluster.status(http)

            await wait_for(lambda: _step_at_least(status, 10), "training under way")
            await cluster.start_worker("newcomer", **DELAY)
            await cluster.wait_done(90)
            # Every worker said goodbye, the newcomer too.
            final = await wait_for(lambda: _left(status, N + 1), "every worker left")
            left = 'coordinator_worker_leaves_total{reason="left"}'

            async def metrics_caught_up() -> str | None:
                # The coordinator's loop copies its counts into the metrics once a period: the
                # last leave shows in /status first (seen in CI: 2 of 3 in the scrape after).
                _, text = await get_json_text(http, f"{cluster.coordinator_url}/metrics")
                return text if _metric(text, left) >= N + 1 else None

            metrics = await wait_for(metrics_caught_up, "the leaves counted in the metrics", 10)
    newcomer = next(w for w in final["workers"] if w["worker_id"] == "newcomer")
    assert newcomer["rank"] == N  # beyond N + k = 2: no rank was free
    pushes = newcomer["pushes"]
    if mode == "sync":
        # A spare: it pushed, and every version is still the mean of exactly N gradients.
        assert sum(pushes.values()) > 0, pushes
        assert final["gradients"]["applied"] == steps * N * SHARDS
    else:
        assert pushes.get("applied", 0) > 0, pushes  # it trained
    assert final["membership"] == {
        "joined": N + 1,
        "rejoined": 0,
        "left": N + 1,
        "expired": 0,
        "shard_restarts": 0,
    }
    assert _metric(metrics, 'coordinator_worker_joins_total{kind="new"}') == N + 1
    assert _metric(metrics, left) == N + 1


async def _step_at_least(status, step: int) -> bool:  # type: ignore[no-untyped-def]
    return (await status())["step"] >= step


async def _left(status, count: int) -> dict | None:  # type: ignore[no-untyped-def]
    current = await status()
    return current if current["membership"]["left"] >= count else None


async def get_json_text(http, url: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    async with http.get(url) as resp:
        return resp.status, await resp.text()


def _metric(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert match, series
    return float(match.group(1))

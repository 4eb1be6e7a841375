"""The metrics each service exports, by name, label and value, without a network: the async
mode's (staleness per shard, dropped by reason, applied by rank, phase) included."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from coordinator.metrics import PHASES, CoordinatorMetrics
from ps_server.metrics import MAX_RANK_LABEL, ShardMetrics
from ps_server.state import ShardState
from pscluster.messages import Push
from pscluster.protocol import ErrorCode
from pscluster.service import add_observability
from pscluster.settings import JobConfig
from worker.metrics import WorkerMetrics


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def grad(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((3, 2), value, np.float32)}


def async_state(**job: object) -> tuple[ShardState, CollectorRegistry]:
    registry = CollectorRegistry()
    config = JobConfig(**{"mode": "async", "optimizer": "sgd", "steps": 100, **job})
    state = ShardState(config, 0, {"w": np.zeros((3, 2), np.float32)}, ShardMetrics(registry))
    return state, registry


async def test_async_metrics_staleness_drops_by_reason_applied_by_rank() -> None:
    state, registry = async_state(workers=3, warmup_steps=2, max_staleness=1)
    await state.set_members({"a": 0, "b": 1, "c": 2})
    # Warmup: only rank 0 trains for the first 2 updates.
    assert (await state.push(Push(worker="b", rank=1, base_version=0, grads=grad(1)))).code is (
        ErrorCode.WARMUP
    )
    for version in range(2):
        assert (
            await state.push(Push(worker="a", rank=0, base_version=version, grads=grad(1)))
        ).accepted
    # Now everyone: staleness 0, 1 (applied), 2 (dropped: over max_staleness = 1).
    assert (await state.push(Push(worker="b", rank=1, base_version=2, grads=grad(1)))).accepted
    assert (await state.push(Push(worker="c", rank=2, base_version=2, grads=grad(1)))).accepted
    # b's next step (a repeat of the same step and base would be a retry: a duplicate).
    stale = Push(worker="b", rank=1, step=1, base_version=2, grads=grad(1))
    assert (await state.push(stale)).code is ErrorCode.STALE
    assert state.version == 4
    assert sample(registry, "ps_version") == 4
    assert sample(registry, "ps_gradients_received_total") == 6
    applied = {r: sample(registry, "ps_gradients_applied_total", rank=r) for r in "012"}
    assert applied == {"0": 2, "1": 1, "2": 1}
    dropped = {
        code.value: sample(registry, "ps_gradients_dropped_total", reason=code.value)
        for code in (ErrorCode.WARMUP, ErrorCode.STALE, ErrorCode.LATE, ErrorCode.DUPLICATE)
    }
    assert dropped == {"warmup": 1, "stale": 1, "late": 0, "duplicate": 0}
    # Staleness of every judged push: 0 (warmup), 0, 0, 0, 1, 2.
    assert sample(registry, "ps_gradient_staleness_count") == 6
    assert sample(registry, "ps_gradient_staleness_sum") == 3
    assert sample(registry, "ps_gradient_staleness_bucket", le="0.0") == 4
    assert sample(registry, "ps_gradient_staleness_bucket", le="1.0") == 5
    assert sample(registry, "ps_live_workers") == 3


def test_rank_labels_stay_bounded() -> None:
    registry = CollectorRegistry()
    metrics = ShardMetrics(registry)
    for rank in (0, MAX_RANK_LABEL, MAX_RANK_LABEL + 1, 10**9):
        metrics.count_applied(rank)
    assert sample(registry, "ps_gradients_applied_total", rank="0") == 1
    assert sample(registry, "ps_gradients_applied_total", rank="other") == 3
    assert metrics.tally_applied == 4


def test_coordinator_phase_is_one_of_waiting_warmup_training_done() -> None:
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry)
    assert sample(registry, "coordinator_phase", phase="waiting") == 1
    assert math.isnan(sample(registry, "coordinator_eval_accuracy_ratio") or 0.0)
    for phase in ("warmup", "training"):
        metrics.observe_status(live_workers=2, global_step=7, steps=100, phase=phase)
        shown = {p: sample(registry, "coordinator_phase", phase=p) for p in PHASES}
        assert shown == {p: float(p == phase) for p in PHASES}
    assert sample(registry, "coordinator_live_workers") == 2
    assert sample(registry, "coordinator_global_step") == 7
    metrics.observe_eval(20, 0.25, 0.93)
    assert sample(registry, "coordinator_eval_accuracy_ratio") == 0.93
    assert sample(registry, "coordinator_eval_loss") == 0.25


def test_worker_step_time_split_into_phases_and_loss() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    for phase, seconds in (("pull", 0.01), ("compute", 0.02), ("push", 0.003), ("wait", 0.004)):
        metrics.observe_phase(phase, seconds)
    metrics.observe_step(0.05, 1.5, 32)
    for phase in ("pull", "compute", "push", "wait"):
        assert sample(registry, "worker_step_phase_seconds_count", phase=phase) == 1
    assert sample(registry, "worker_training_loss") == 1.5
    assert sample(registry, "worker_steps_total") == 1
    assert sample(registry, "worker_samples_total") == 32


async def test_requests_counted_and_timed_by_route_not_path(aiohttp_client) -> None:
    registry = CollectorRegistry()
    app = web.Application()

    async def item(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"]})

    app.router.add_get("/items/{id}", item)
    add_observability(app, registry)
    client: TestClient = await aiohttp_client(app)
    for path in ("/items/1", "/items/2", "/nowhere", "/healthz"):
        async with client.get(path):
            pass
    assert sample(registry, "http_requests_total", endpoint="/items/{id}", code="200") == 2
    assert sample(registry, "http_requests_total", endpoint="unmatched", code="404") == 1
    assert sample(registry, "http_request_duration_seconds_count", endpoint="/healthz") == 1
    assert sample(registry, "process_resident_memory_bytes") is not None
    async with client.get("/metrics") as resp:
        assert resp.status == 200
        body = await resp.read()
    # What every service serves passes Prometheus' own linter.
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (apt-get install prometheus)"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert checked.returncode == 0 and not checked.stdout + checked.stderr


def test_every_metric_family_lints_clean() -> None:
    registry = CollectorRegistry()
    ShardMetrics(registry)
    WorkerMetrics(registry)
    CoordinatorMetrics(registry)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (apt-get install prometheus)"
    body = generate_latest(registry)
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert checked.returncode == 0 and not checked.stdout + checked.stderr, checked.stdout


def test_deploy_doc_lists_every_metric() -> None:
    registry = CollectorRegistry()
    ShardMetrics(registry)
    WorkerMetrics(registry)
    CoordinatorMetrics(registry)
    add_observability(web.Application(), registry)
    doc = (Path(__file__).resolve().parent.parent / "docs/deploy.md").read_text()
    for family in registry.collect():
        if family.name.startswith("process_"):
            continue
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}`" in doc, f"docs/deploy.md does not describe {name}"

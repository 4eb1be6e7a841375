"""The coordinator's Prometheus metrics: the job at a glance."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from coordinator.membership import Turnover

PHASES = ("waiting", "warmup", "training", "done")


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.live_workers = Gauge(
            "coordinator_live_workers", "Workers holding a lease.", registry=registry
        )
        self.phase = Gauge(
            "coordinator_phase",
            "1 for the job's current phase, 0 for the others.",
            ["phase"],
            registry=registry,
        )
        self.global_step = Gauge(
            "coordinator_global_step", "Lowest version across the shards.", registry=registry
        )
        self.steps_target = Gauge(
            "coordinator_steps_target", "Steps the job trains for.", registry=registry
        )
        self.eval_loss = Gauge(
            "coordinator_eval_loss",
            "Held-out cross-entropy at the last evaluation.",
            registry=registry,
        )
        self.eval_accuracy = Gauge(
            "coordinator_eval_accuracy_ratio",
            "Held-out accuracy at the last evaluation.",
            registry=registry,
        )
        self.eval_auc = Gauge(
            "coordinator_eval_auc_ratio",
            "Held-out AUC at the last evaluation (binary models with predict; else NaN).",
            registry=registry,
        )
        self.eval_step = Gauge(
            "coordinator_eval_step", "Global step of the last evaluation.", registry=registry
        )
        self.joins = Counter(
            "coordinator_worker_joins",
            "Workers that registered: new ones, and ones that had left or expired (a restart).",
            ["kind"],
            registry=registry,
        )
        self.leaves = Counter(
            "coordinator_worker_leaves",
            "Workers that left the membership: said goodbye, or missed their heartbeats.",
            ["reason"],
            registry=registry,
        )
        self.shard_restarts = Counter(
            "coordinator_shard_restarts",
            "Shards that registered afresh after serving.",
            registry=registry,
        )
        self._counted = Turnover()
        for kind in ("new", "returning"):
            self.joins.labels(kind)
        for reason in ("left", "expired"):
            self.leaves.labels(reason)
        # No evaluation yet: NaN, not a loss and accuracy of 0 (PromQL's min/max skip NaN).
        self.eval_loss.set(float("nan"))
        self.eval_accuracy.set(float("nan"))
        self.eval_auc.set(float("nan"))
        # Every phase is a series from the start (0 or 1), so queries and dashboards never
        # see one appear out of nothing.
        for phase in PHASES:
            self.phase.labels(phase).set(1 if phase == PHASES[0] else 0)

    def observe_eval(
        self, step: int, loss: float, accuracy: float, auc: float | None = None
    ) -> None:
        self.eval_step.set(step)
        self.eval_loss.set(loss)
        self.eval_accuracy.set(accuracy)
        if auc is not None:
            self.eval_auc.set(auc)

    def observe_turnover(self, now: Turnover) -> None:
        """Count the joins, leaves and restarts since the last look."""
        was = self._counted
        self.joins.labels("new").inc(now.joined - was.joined)
        self.joins.labels("returning").inc(now.rejoined - was.rejoined)
        self.leaves.labels("left").inc(now.left - was.left)
        self.leaves.labels("expired").inc(now.expired - was.expired)
        self.shard_restarts.inc(now.shard_restarts - was.shard_restarts)
        self._counted = Turnover(**now.as_json())

    def observe_status(
        self, *, live_workers: int, global_step: int, steps: int, phase: str
    ) -> None:
        self.live_workers.set(live_workers)
        self.global_step.set(global_step)
        self.steps_target.set(steps)
        for name in PHASES:
            self.phase.labels(name).set(1 if name == phase else 0)


METRICS = web.AppKey("coordinator_metrics", CoordinatorMetrics)

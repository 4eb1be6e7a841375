"""The worker's Prometheus metrics and the running means it reports in heartbeats."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Where a step's time goes. pull: fetching parameters outside a push reply; compute: loss and
# gradients; delay: simulated straggling; push: sending gradients and receiving parameters;
# wait: the part of the push the shard spent holding the reply until the sync step completed.
PHASES = ("pull", "compute", "delay", "push", "wait")


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.phase_seconds = Histogram(
            "worker_step_phase_seconds",
            "Time per step spent in each phase.",
            ["phase"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.step_seconds = Histogram(
            "worker_step_seconds",
            "Wall time of one whole step.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.steps = Counter(
            "worker_steps_total", "Gradients computed and pushed.", registry=registry
        )
        self.pushes = Counter(
            "worker_pushes_total",
            "Pushes to shards, by the shard's answer.",
            ["status"],
            registry=registry,
        )
        self.loss = Gauge(
            "worker_training_loss", "Training loss of the last batch.", registry=registry
        )
        self.samples = Counter(
            "worker_samples_total", "Training examples processed.", registry=registry
        )
        self.totals: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.total_step_s = 0.0
        self.step_count = 0
        self.last_loss: float | None = None
        self.push_tally: Tally[str] = Tally()
        # Children bound once: a label lookup per step costs more than the observation.
        self._phases = {phase: self.phase_seconds.labels(phase) for phase in PHASES}
        self._statuses: dict[str, Any] = {}

    def observe_phase(self, phase: str, seconds: float) -> None:
        self._phases[phase].observe(seconds)
        self.totals[phase] += seconds

    def observe_step(self, seconds: float, loss: float, batch: int) -> None:
        self.step_seconds.observe(seconds)
        self.steps.inc()
        self.samples.inc(batch)
        self.loss.set(loss)
        self.total_step_s += seconds
        self.step_count += 1
        self.last_loss = loss

    def observe_push(self, status: str) -> None:
        child = self._statuses.get(status)
        if child is None:  # statuses are enum members: a bounded set
            child = self._statuses[status] = self.pushes.labels(status)
        child.inc()
        self.push_tally[status] += 1

    def summary(self) -> dict[str, Any]:
        """What heartbeats carry to the coordinator's /status."""
        n = max(1, self.step_count)
        return {
            "steps": self.step_count,
            "loss": self.last_loss,
            "step_seconds": self.total_step_s / n,
            "phase_seconds": {phase: total / n for phase, total in self.totals.items()},
            "pushes": dict(self.push_tally),
        }

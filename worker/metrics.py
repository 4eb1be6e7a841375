"""The worker's Prometheus metrics and the running means it reports in heartbeats."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from pscluster.tallies import Buckets, counter, gauge, histogram, labelled_counter

# Where a step's time goes. pull: fetching parameters outside a push reply; compute: loss and
# gradients; delay: simulated straggling; push: sending gradients and receiving parameters;
# wait: the part of the push the shard spent holding the reply until the sync step completed.
PHASES = ("pull", "compute", "delay", "push", "wait")


PHASE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class WorkerMetrics(Collector):
    """Plain numbers per step (``pscluster.tallies``), exported when scraped: a step made a dozen
    ``prometheus_client`` updates, a tenth of a small model's step."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.phase_seconds = {phase: Buckets(PHASE_BUCKETS) for phase in PHASES}
        self.step_seconds = Buckets(STEP_BUCKETS)
        self.totals: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.total_step_s = 0.0
        self.step_count = 0
        self.samples = 0
        self.last_loss: float | None = None
        self.push_tally: Tally[str] = Tally()
        registry.register(self)

    def observe_phase(self, phase: str, seconds: float) -> None:
        self.phase_seconds[phase].observe(seconds)
        self.totals[phase] += seconds

    def observe_step(self, seconds: float, loss: float, batch: int) -> None:
        self.step_seconds.observe(seconds)
        self.samples += batch
        self.total_step_s += seconds
        self.step_count += 1
        self.last_loss = loss

    def observe_push(self, status: str) -> None:
        self.push_tally[status] += 1  # statuses are enum members: a bounded set

    def collect(self) -> Iterator[Metric]:
        yield histogram(
            "worker_step_phase_seconds",
            "Time per step spent in each phase.",
            [([phase], buckets) for phase, buckets in self.phase_seconds.items()],
            ["phase"],
        )
        yield histogram(
            "worker_step_seconds", "Wall time of one whole step.", [([], self.step_seconds)]
        )
        yield counter("worker_steps", "Gradients computed and pushed.", self.step_count)
        yield labelled_counter(
            "worker_pushes",
            "Pushes to shards, by the shard's answer.",
            "status",
            ((str(status), count) for status, count in self.push_tally.items()),
        )
        yield gauge(
            "worker_training_loss",
            "Training loss of the last batch.",
            0.0 if self.last_loss is None else self.last_loss,
        )
        yield counter("worker_samples", "Training examples processed.", self.samples)

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

"""The shard's Prometheus metrics, with plain counters beside them for the JSON ``/state``."""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pscluster.protocol import ErrorCode

STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# Ranks are below N + k; a rank label at or above the largest world a job may have is a client's
# mistake, counted under "other" so that no client can grow the label set without bound.
MAX_RANK_LABEL = 4096 + 4096


class ShardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.version = Gauge("ps_version", "Updates this shard has applied.", registry=registry)
        self.received = Counter(
            "ps_gradients_received_total", "Gradient pushes received.", registry=registry
        )
        self.applied = Counter(
            "ps_gradients_applied_total",
            "Gradients applied (summed into a step, or applied on arrival in async), by rank.",
            ["rank"],
            registry=registry,
        )
        self.dropped = Counter(
            "ps_gradients_dropped_total",
            "Gradient pushes refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.staleness = Histogram(
            "ps_gradient_staleness",
            "Shard version at arrival minus the gradient's base version.",
            buckets=STALENESS_BUCKETS,
            registry=registry,
        )
        self.gather_seconds = Histogram(
            "ps_sync_gather_seconds",
            "sync: time from a step's first gradient to its last.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.deadline_seconds = Gauge(
            "ps_sync_deadline_seconds",
            "sync: the deadline of the latest step, from its first gradient (NaN: none).",
            registry=registry,
        )
        self.deadline_seconds.set(float("nan"))
        self.steps_closed_early = Counter(
            "ps_sync_steps_closed_early_total",
            "sync: steps closed at their deadline with fewer than N gradients.",
            registry=registry,
        )
        self.step_gradients = Histogram(
            "ps_sync_step_gradients",
            "sync: gradients averaged per step.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128),
            registry=registry,
        )
        self.bytes_received = Counter(
            "ps_received_bytes_total", "Request body bytes received.", registry=registry
        )
        self.bytes_sent = Counter(
            "ps_sent_bytes_total", "Response body bytes sent.", registry=registry
        )
        self.live_workers = Gauge(
            "ps_live_workers", "Live workers, as the coordinator last said.", registry=registry
        )
        self.required = Gauge(
            "ps_sync_required_gradients",
            "Gradients that complete a sync step now.",
            registry=registry,
        )
        # Plain tallies for /state and the launcher's summary.
        self.tally_applied = 0
        self.tally_received = 0
        self.tally_dropped: Tally[str] = Tally({code.value: 0 for code in _DROP_REASONS})
        for reason in _DROP_REASONS:
            self.dropped.labels(reason.value)
        self._applied_by_rank: dict[int, Any] = {}

    def count_received(self) -> None:
        self.received.inc()
        self.tally_received += 1

    def count_applied(self, rank: int) -> None:
        child = self._applied_by_rank.get(rank)
        if child is None:
            # Bound once per rank, not looked up by label on every push.
            child = self.applied.labels(str(rank) if 0 <= rank < MAX_RANK_LABEL else "other")
            if 0 <= rank < MAX_RANK_LABEL:
                self._applied_by_rank[rank] = child
        child.inc()
        self.tally_applied += 1

    def count_dropped(self, reason: ErrorCode) -> None:
        self.dropped.labels(reason.value).inc()
        self.tally_dropped[reason.value] += 1


class DataMetrics:
    """The data port's requests, by kind and status, and the time to answer them. Children are
    bound once per label set (a bounded set: kinds and status enums)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "ps_data_requests_total",
            "Data-port requests answered (hello, push, pull), by kind and reply status.",
            ["kind", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "ps_data_request_duration_seconds",
            "Time to answer a data-port request (a held sync reply included), by kind.",
            ["kind"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1, 10, 60),
            registry=registry,
        )
        self._counters: dict[tuple[str, str], Any] = {}
        self._timers: dict[str, Any] = {}

    def observe(self, kind: str, status: str, seconds: float) -> None:
        counter = self._counters.get((kind, status))
        if counter is None:
            counter = self._counters[kind, status] = self.requests.labels(kind, status)
        timer = self._timers.get(kind)
        if timer is None:
            timer = self._timers[kind] = self.seconds.labels(kind)
        counter.inc()
        timer.observe(seconds)


# Reasons counted as dropped gradients; bad input is a client error, counted by the HTTP metrics.
_DROP_REASONS = (
    ErrorCode.LATE,
    ErrorCode.DUPLICATE,
    ErrorCode.STALE,
    ErrorCode.WARMUP,
    ErrorCode.DONE,
    ErrorCode.FUTURE_VERSION,
    ErrorCode.UNKNOWN_WORKER,
)

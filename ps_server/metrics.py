"""The shard's Prometheus metrics: plain counters on the hot path, read by a collector when
scraped.

A push used to make about ten ``prometheus_client`` updates (each taking a lock, four of them
histograms): a tenth of a small push's CPU. Here a push adds to ints and floats, and
``collect`` builds the metric families from them only when ``/metrics`` is read. The names,
types, labels and buckets are those the ``Counter``, ``Gauge`` and ``Histogram`` classes made.
The same counters serve the JSON ``/state``.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from pscluster.protocol import ErrorCode
from pscluster.tallies import Buckets, Value, counter, gauge, histogram, labelled_counter

STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
GATHER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STEP_GRADIENT_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128)
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1, 10, 60)
# Ranks are below N + k; a rank label at or above the largest world a job may have is a client's
# mistake, counted under "other" so that no client can grow the label set without bound.
MAX_RANK_LABEL = 4096 + 4096


class ShardMetrics(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.version = Value()
        self.staleness = Buckets(STALENESS_BUCKETS)
        self.gather_seconds = Buckets(GATHER_BUCKETS)
        self.deadline_seconds = Value(float("nan"))
        self.steps_closed_early = Value()
        self.step_gradients = Buckets(STEP_GRADIENT_BUCKETS)
        self.bytes_received = Value()
        self.bytes_sent = Value()
        self.live_workers = Value()
        self.required = Value()
        # Also for /state and the launcher's summary.
        self.tally_applied = 0
        self.tally_received = 0
        self.tally_dropped: Tally[str] = Tally({code.value: 0 for code in _DROP_REASONS})
        self._applied_by_rank: dict[str, int] = {}
        registry.register(self)

    def count_received(self) -> None:
        self.tally_received += 1

    def count_applied(self, rank: int) -> None:
        label = str(rank) if 0 <= rank < MAX_RANK_LABEL else "other"
        by_rank = self._applied_by_rank
        by_rank[label] = by_rank.get(label, 0) + 1
        self.tally_applied += 1

    def count_dropped(self, reason: ErrorCode) -> None:
        self.tally_dropped[reason.value] += 1

    def collect(self) -> Iterator[Metric]:
        yield gauge("ps_version", "Updates this shard has applied.", self.version.value)
        yield counter("ps_gradients_received", "Gradient pushes received.", self.tally_received)
        yield labelled_counter(
            "ps_gradients_applied",
            "Gradients applied (summed into a step, or applied on arrival in async), by rank.",
            "rank",
            self._applied_by_rank.items(),
        )
        yield labelled_counter(
            "ps_gradients_dropped",
            "Gradient pushes refused, by reason.",
            "reason",
            self.tally_dropped.items(),
        )
        yield histogram(
            "ps_gradient_staleness",
            "Shard version at arrival minus the gradient's base version.",
            [([], self.staleness)],
        )
        yield histogram(
            "ps_sync_gather_seconds",
            "sync: time from a step's first gradient to its last.",
            [([], self.gather_seconds)],
        )
        yield gauge(
            "ps_sync_deadline_seconds",
            "sync: the deadline of the latest step, from its first gradient (NaN: none).",
            self.deadline_seconds.value,
        )
        yield counter(
            "ps_sync_steps_closed_early",
            "sync: steps closed at their deadline with fewer than N gradients.",
            self.steps_closed_early.value,
        )
        yield histogram(
            "ps_sync_step_gradients",
            "sync: gradients averaged per step.",
            [([], self.step_gradients)],
        )
        yield counter(
            "ps_received_bytes", "Request body bytes received.", self.bytes_received.value
        )
        yield counter("ps_sent_bytes", "Response body bytes sent.", self.bytes_sent.value)
        yield gauge(
            "ps_live_workers",
            "Live workers, as the coordinator last said.",
            self.live_workers.value,
        )
        yield gauge(
            "ps_sync_required_gradients",
            "Gradients that complete a sync step now.",
            self.required.value,
        )


class DataMetrics(Collector):
    """The data port's requests, by kind and status, and the time to answer them (a bounded
    label set: kinds and status enums)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._counts: dict[tuple[str, str], int] = {}
        self._seconds: dict[str, Buckets] = {}
        registry.register(self)

    def observe(self, kind: str, status: str, seconds: float) -> None:
        key = (kind, status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        timer = self._seconds.get(kind)
        if timer is None:
            timer = self._seconds[kind] = Buckets(REQUEST_BUCKETS)
        timer.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "ps_data_requests",
            "Data-port requests answered (hello, push, pull), by kind and reply status.",
            labels=["kind", "status"],
        )
        for (kind, status), count in self._counts.items():
            requests.add_metric([kind, str(status)], count)
        yield requests
        yield histogram(
            "ps_data_request_duration_seconds",
            "Time to answer a data-port request (a held sync reply included), by kind.",
            [([kind], timer) for kind, timer in self._seconds.items()],
            ["kind"],
        )


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

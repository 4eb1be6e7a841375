"""The sparse tables' Prometheus metrics, read from the tables when scraped (a collector): the
hot path only counts, in the tables themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ps_server.sparse.tables import ShardTables


class SparseCollector(Collector):
    """Rows per table, rows admitted and evicted, gradient rows dropped (not admitted yet) and
    the sparse bytes pulled and pushed, of this shard's tables (none until it has its job)."""

    def __init__(self, tables: Callable[[], ShardTables | None], shard: int) -> None:
        self._tables = tables
        self._shard = str(shard)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        tables = self._tables()
        labels = ["table", "shard"]
        rows = GaugeMetricFamily("ps_sparse_rows", "Rows a sparse table holds.", labels=labels)
        memory = GaugeMetricFamily(
            "ps_sparse_table_bytes",
            "Memory a sparse table's arrays hold (rows, optimizer state, index).",
            labels=labels,
        )
        admitted = CounterMetricFamily(
            "ps_sparse_rows_admitted", "Rows created (admitted) in a sparse table.", labels=labels
        )
        evicted = CounterMetricFamily(
            "ps_sparse_rows_evicted",
            "Rows evicted from a sparse table, by reason (expired: untouched; capacity: LRU).",
            labels=[*labels, "reason"],
        )
        dropped = CounterMetricFamily(
            "ps_sparse_gradient_rows_dropped",
            "Row gradients dropped because their id was not admitted yet.",
            labels=labels,
        )
        moved = CounterMetricFamily(
            "ps_sparse_bytes",
            "Bytes of sparse ids and rows, by direction (pulled: in replies; pushed: received).",
            labels=["direction", "shard"],
        )
        if tables is not None:
            for name, table in tables.tables.items():
                key = [name, self._shard]
                counts = table.counts
                rows.add_metric(key, table.rows)
                memory.add_metric(key, table.nbytes)
                admitted.add_metric(key, counts.admitted)
                evicted.add_metric([*key, "expired"], counts.evicted_expired)
                evicted.add_metric([*key, "capacity"], counts.evicted_capacity)
                dropped.add_metric(key, counts.dropped_rows)
            moved.add_metric(["pulled", self._shard], tables.bytes_pulled)
            moved.add_metric(["pushed", self._shard], tables.bytes_pushed)
        yield from (rows, memory, admitted, evicted, dropped, moved)


def register_sparse_metrics(
    registry: CollectorRegistry, tables: Callable[[], ShardTables | None], shard: int
) -> None:
    registry.register(SparseCollector(tables, shard))

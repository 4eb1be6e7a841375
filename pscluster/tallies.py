"""Plain numbers for hot-path metrics, turned into Prometheus metric families only when scraped.

A ``prometheus_client`` Counter or Histogram takes a lock and walks its buckets on every update:
microseconds each, several per message or step. A service keeps ``Value`` and ``Buckets`` here
instead and exports them with a ``prometheus_client`` collector (``registry.register``, its
``collect`` building the families from these), under the names, types, labels and buckets the
metric classes would have.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily


class Value:
    """A counter's or a gauge's number."""

    __slots__ = ("value",)

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value


class Buckets:
    """A histogram's counts per bucket (not cumulative: one add per observation) and sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(bound) for bound in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf only)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Bucket i holds the values in (bounds[i-1], bounds[i]]: Prometheus' ``le``.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as the exposition has them, ``+Inf`` last."""
        pairs, running = [], 0
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, float(running)))
        return pairs


def _le(bound: float) -> str:
    # prometheus_client writes bounds as Go does: 0.0, 0.001, 2.5, 10.0 (repr, for these).
    return repr(float(bound))


def histogram(
    name: str,
    documentation: str,
    series: Iterable[tuple[list[str], Buckets]],
    labels: Sequence[str] = (),
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, buckets in series:
        family.add_metric(values, buckets.cumulative(), buckets.total)
    return family


def labelled_counter(
    name: str, documentation: str, label: str, counts: Iterable[tuple[str, float]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in counts:
        family.add_metric([value], count)
    return family


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """``name`` without ``_total`` (the family's sample gets it)."""
    return CounterMetricFamily(name, documentation, value=value)

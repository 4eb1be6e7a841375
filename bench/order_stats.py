"""Step time with N of N + k workers, from order statistics (Chen et al. 2016).

A sync step that averages the first N of n = N + k gradients lasts a fixed cost c (reply,
compute, push, apply) plus the N-th smallest of the n workers' delays. With the shifted
exponential delays of ``--delay exponential`` (X = s + Exp(mean s)),

    E[X(N:n)] = s + s * (H(n) - H(n - N)),    H(m) = 1 + 1/2 + ... + 1/m,

since the gaps between the order statistics of n exponentials are exponentials of mean s/n,
s/(n-1), ... Chen et al. assume every worker starts each step together. In the cluster a dropped
worker is still busy when the step closes and starts its next step when its late push returns,
so it lags the others; ``simulate_step_seconds`` plays that out to say how far it moves the
prediction.
"""

from __future__ import annotations

import heapq

import numpy as np


def harmonic(m: int) -> float:
    return float(sum(1.0 / i for i in range(1, m + 1)))


def expected_order_statistic(n: int, rank: int, shift: float, scale: float) -> float:
    """E[X(rank:n)] for X = shift + Exp(mean scale), n i.i.d. draws, rank 1 = the smallest."""
    if not 1 <= rank <= n:
        raise ValueError(f"rank {rank} outside 1..{n}")
    return shift + scale * (harmonic(n) - harmonic(n - rank))


def predicted_step_seconds(workers: int, aggregate: int, delay_s: float, fixed_s: float) -> float:
    """Chen et al.'s step time for ``--delay exponential --delay-s delay_s``: every worker starts
    together; the step waits for the ``aggregate``-th of ``workers`` delays."""
    return fixed_s + expected_order_statistic(workers, aggregate, delay_s, delay_s)


def simulate_step_seconds(
    workers: int,
    aggregate: int,
    delay_s: float,
    fixed_s: float,
    *,
    steps: int = 20000,
    seed: int = 0,
) -> float:
    """Mean step time when a dropped worker starts its next step only when its late push is
    answered (at its own arrival), as in the cluster, rather than with the others."""
    rng = np.random.default_rng(seed)

    def arrival(start: float) -> float:
        return start + fixed_s + delay_s * (1.0 + float(rng.exponential(1.0)))

    # (arrival time, worker, version its gradient is based on)
    events = [(arrival(0.0), j, 0) for j in range(workers)]
    heapq.heapify(events)
    version, waiting, closes = 0, [], []
    while version < steps:
        time, worker, base = heapq.heappop(events)
        if base < version:  # late: dropped; it starts again at once on the current version
            heapq.heappush(events, (arrival(time), worker, version))
            continue
        waiting.append(worker)
        if len(waiting) == aggregate:
            version += 1
            closes.append(time)
            for w in waiting:
                heapq.heappush(events, (arrival(time), w, version))
            waiting = []
    skip = steps // 10  # leave out the start, before the lags settle
    return (closes[-1] - closes[skip - 1]) / (len(closes) - skip)

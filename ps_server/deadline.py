"""When a sync step may close before all N gradients are in: the adaptive deadline, as pure
functions of recent arrival times (no clocks, no sockets).

A step closes when N gradients have arrived, or once its deadline (counted from the step's first
arrival) has passed and at least ``min_gradients`` are in. ``--deadline auto`` derives the deadline
from recent arrival offsets (seconds from a step's first gradient to each later one, late ones
included):

    deadline = median(x) + SPREAD * 1.4826 * MAD(x) + MARGIN_S

the Hampel outlier threshold: an arrival further above the median than SPREAD robust standard
deviations is a straggler's. Median and MAD ignore up to half the samples, so a persistent
straggler (one worker of four) or a rare long tail moves the deadline little, while a slower
cluster as a whole moves it at once. Late arrivals count too (offset from their own step's first
arrival): without them the samples would be cut off at the deadline itself, and the deadline
would shrink step after step.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Robust standard deviations above the median that still count as on time.
SPREAD = 3.0
# Scales the MAD to a standard deviation for normally distributed samples.
MAD_TO_SIGMA = 1.4826
# Added to every deadline: timer and scheduling jitter (an event loop wakes ~1 ms late).
MARGIN_S = 0.002
# Fewer recent offsets than this: no deadline yet, the step waits for N.
MIN_SAMPLES = 8
# Offsets kept: about the last 20 steps of 4 workers.
WINDOW = 64


def default_min_gradients(aggregate: int) -> int:
    """ceil(N / 2): a step closed at its deadline still averages at least half of N."""
    return max(1, math.ceil(aggregate / 2))


def auto_deadline(
    offsets: Sequence[float],
    *,
    spread: float = SPREAD,
    margin_s: float = MARGIN_S,
    min_samples: int = MIN_SAMPLES,
) -> float | None:
    """Seconds after a step's first gradient at which it may close; None: not enough history."""
    if len(offsets) < min_samples:
        return None
    median = statistics.median(offsets)
    mad = statistics.median(abs(x - median) for x in offsets)
    return median + spread * MAD_TO_SIGMA * mad + margin_s


def step_may_close(
    *,
    contributions: int,
    required: int,
    min_gradients: int,
    elapsed_s: float,
    deadline_s: float | None,
) -> bool:
    """All ``required`` gradients are in, or the deadline has passed with enough of them."""
    if contributions >= required:
        return True
    if deadline_s is None or elapsed_s < deadline_s:
        return False
    return contributions >= min(min_gradients, required)

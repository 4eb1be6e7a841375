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

Only arrivals of workers *in phase* count, and only they are waited for. A worker is in phase for
a step when this shard's latest reply to it carried the step's version and was sent before the
step's first gradient arrived (``in_phase``). One that was dropped is still computing a gradient
for an older version (its next push here is late, whatever the step waits), or started this
step's gradient only after the step had opened: its arrival measures when it started, not how
fast it is, and counting it let one cut worker widen the deadline for the next twenty steps
(measured under long_tail: deadlines of 15-131 ms, median 40, where without a deadline the last
gradient of a step came a median 11 ms after the first; docs/stragglers.md).
So a step with a deadline also closes as soon as every in-phase worker is in and at least
``min_gradients`` are (``step_may_close``): during a straggler's 200 ms sleep the others' steps
no longer each wait for the deadline. A dropped worker is back in phase within two steps: the
reply to its late push carries the version being gathered, and if it misses that one too, its
next late reply comes before the following step opens.

A worker in phase is still not waited for when it cannot make the deadline: this shard keeps
each worker's recent compute times (its reply sent to its next push arriving; the median of
the last ``DURATIONS_KEPT``, once there are ``MIN_DURATIONS``), and a worker expected after
the deadline (``arrives_in_time``) is not awaited: the step closes once the others are in.
Without it, a persistent straggler (one worker five times slower, ``one-slow``) was in phase
every other step, and each such step sat out its whole deadline for a gradient that came
40 ms later: 27 ms a step against 18 ms with one spare, on a quiet machine. A worker only a
little behind (expected within the deadline) is still waited for, so it gets back in step.

And a worker whose push was late, once the step after has opened, gets its reply when that
step closes, with its result (``SyncGathering.holds_late_reply``): it starts the next step with
the others, instead of computing a gradient for a step that closes before it is done.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

# Robust standard deviations above the median that still count as on time. One, not the
# Hampel filter's usual three: under exponential delays (every worker a straggler now and
# then) three waited for nearly every gradient (3.91 of 4 a step, deadlines of 33 ms) and
# reached the target loss 1.29x later than the best spares setting; one cut the tail (3.49 a
# step, 17 ms) at 1.05x. Patterns with a tight core and rare outliers hardly move: their MAD
# is small either way (bench.stragglers, docs/stragglers.md).
SPREAD = 1.0
# Scales the MAD to a standard deviation for normally distributed samples.
MAD_TO_SIGMA = 1.4826
# Added to every deadline: timer and scheduling jitter (an event loop wakes ~1 ms late).
MARGIN_S = 0.002
# Fewer recent offsets than this: no deadline yet, the step waits for N.
MIN_SAMPLES = 8
# Offsets kept: about the last 20 steps of 4 workers.
WINDOW = 64
# A worker's recent compute times kept: its median ignores one long stall (or two).
DURATIONS_KEPT = 5
# Fewer compute times than this: too few to judge, the worker is waited for.
MIN_DURATIONS = 3


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


def in_phase(sent: tuple[int, float] | None, version: int, opened_at: float) -> bool:
    """Whether the step of ``version``, opened (first gradient) at ``opened_at``, waits for and
    learns from a worker whose latest reply from this shard was ``sent`` = (the version it
    carried, when). None: not heard from since this shard started, so it may be on its way."""
    if sent is None:
        return True
    sent_version, sent_at = sent
    return sent_version >= version and sent_at <= opened_at


def arrives_in_time(
    sent_at: float, durations: Sequence[float], opened_at: float, deadline_s: float
) -> bool:
    """Whether a worker sent its parameters at ``sent_at`` and taking the median of its recent
    ``durations`` to compute is expected before the deadline of the step opened at
    ``opened_at``. Fewer than ``MIN_DURATIONS``: assume it is (one slow step is no pattern)."""
    if len(durations) < MIN_DURATIONS:
        return True
    return sent_at + statistics.median(durations) <= opened_at + deadline_s


def step_may_close(
    *,
    contributions: int,
    required: int,
    min_gradients: int,
    elapsed_s: float,
    deadline_s: float | None,
    awaited: int | None = None,
) -> bool:
    """All ``required`` gradients are in; or, with a deadline, at least ``min_gradients`` are and
    either the deadline has passed or no in-phase worker is still ``awaited`` (None: unknown)."""
    if contributions >= required:
        return True
    if deadline_s is None or contributions < min(min_gradients, required):
        return False
    return elapsed_s >= deadline_s or awaited == 0

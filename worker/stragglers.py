"""Simulated stragglers: an artificial delay added to each of a worker's steps.

For tests, demos and capacity planning: "what does one 5x slower worker cost us, and do spares
win it back?" The delay is a pure function of a seeded generator, so runs are repeatable.
"""

from __future__ import annotations

import numpy as np

from pscluster.settings import DelayKind

# long_tail: how often a step is hit, and how much longer it then takes.
TAIL_PROBABILITY = 0.05
TAIL_MULTIPLIER = 20.0


def sample_delay(kind: DelayKind, base_s: float, factor: float, rng: np.random.Generator) -> float:
    """Seconds to sleep after computing one step's gradient."""
    scale = base_s * factor
    if kind is DelayKind.NONE or scale <= 0:
        return 0.0
    if kind is DelayKind.FIXED:
        return scale
    if kind is DelayKind.EXPONENTIAL:
        # Shifted exponential: never faster than the base, mean twice the base.
        return scale * (1.0 + float(rng.exponential(1.0)))
    # LONG_TAIL
    return scale * (TAIL_MULTIPLIER if rng.random() < TAIL_PROBABILITY else 1.0)

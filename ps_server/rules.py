"""The shard's decisions as pure functions of its state: no sockets, no clocks, no locks.

The HTTP handlers only move bytes in and out of these; the tests drive them exhaustively.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from pscluster.protocol import ErrorCode
from pscluster.settings import StalenessPolicy


@dataclass(frozen=True)
class Verdict:
    """What to do with one push: apply it (with ``scale``) or refuse it with ``code``."""

    code: ErrorCode | None  # None: accept
    scale: float = 1.0
    staleness: int = 0

    @property
    def accepted(self) -> bool:
        return self.code is None


def judge_sync_push(
    *,
    version: int,
    base_version: int,
    worker: str,
    contributors: Collection[str],
    steps: int,
    epoch: int = 0,
    base_epoch: int | None = None,
) -> Verdict:
    """Sync mode: accept a gradient only for the version being aggregated, once per worker, and
    only of the shard's epoch: after a rewind to a consistent cut, a gradient sent before it
    (a retry, say) may have been dropped by another shard's rewind, and must be computed again.
    A push that names no epoch (a client of before epochs) is judged by its version alone."""
    if version >= steps:
        return Verdict(ErrorCode.DONE)
    if base_epoch is not None and base_epoch != epoch:
        return Verdict(ErrorCode.REWOUND)
    if base_version > version:
        return Verdict(ErrorCode.FUTURE_VERSION)
    if base_version < version:
        return Verdict(ErrorCode.LATE, staleness=version - base_version)
    if worker in contributors:
        return Verdict(ErrorCode.DUPLICATE)
    return Verdict(None)


def required_contributions(aggregate: int, live_workers: int | None) -> int:
    """Gradients that complete a sync step: N, or all live workers when fewer than N remain.

    ``live_workers`` is None until the coordinator has told the shard its membership.
    """
    if live_workers is None:
        return aggregate
    return max(1, min(aggregate, live_workers))


def sync_step_complete(contributions: int, required: int) -> bool:
    return contributions >= required


def staleness_scale(staleness: int, policy: StalenessPolicy) -> float:
    """How strongly a gradient of this staleness is applied."""
    if policy is StalenessPolicy.INVERSE:
        # Zhang et al. 2016: lr / tau for tau >= 1; a fresh gradient (tau = 0) is not amplified.
        return 1.0 / staleness if staleness >= 1 else 1.0
    if policy is StalenessPolicy.INVERSE_PLUS_ONE:
        return 1.0 / (1.0 + staleness)
    return 1.0


def in_warmup(version: int, warmup_steps: int) -> bool:
    """During the first ``warmup_steps`` updates only rank 0 trains."""
    return version < warmup_steps


def judge_async_push(
    *,
    version: int,
    base_version: int,
    rank: int,
    steps: int,
    max_staleness: int | None,
    policy: StalenessPolicy,
    warmup_steps: int,
    leader: int = 0,
) -> Verdict:
    """Async mode: apply on arrival unless done, in warmup for this rank, or too stale.

    ``leader`` is the rank that trains alone during warmup: rank 0, or the lowest live rank when
    rank 0 has died (else warmup would never end).
    """
    if version >= steps:
        return Verdict(ErrorCode.DONE)
    if base_version > version:
        return Verdict(ErrorCode.FUTURE_VERSION)
    staleness = version - base_version
    if in_warmup(version, warmup_steps) and rank != leader:
        return Verdict(ErrorCode.WARMUP, staleness=staleness)
    if max_staleness is not None and staleness > max_staleness:
        return Verdict(ErrorCode.STALE, staleness=staleness)
    return Verdict(None, scale=staleness_scale(staleness, policy), staleness=staleness)

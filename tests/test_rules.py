"""The shard's decisions, exhaustively, with no sockets."""

from __future__ import annotations

import itertools

import pytest

from ps_server.rules import (
    judge_async_push,
    judge_sync_push,
    required_contributions,
    staleness_scale,
    sync_step_complete,
)
from pscluster.protocol import ErrorCode
from pscluster.settings import StalenessPolicy


@pytest.mark.parametrize(
    ("version", "base", "contributors", "expected"),
    [
        (5, 5, set(), None),
        (5, 5, {"b"}, None),
        (5, 5, {"a"}, ErrorCode.DUPLICATE),
        (5, 4, set(), ErrorCode.LATE),
        (5, 0, {"a"}, ErrorCode.LATE),  # late wins over duplicate: the old round is gone
        (5, 6, set(), ErrorCode.FUTURE_VERSION),
        (10, 10, set(), ErrorCode.DONE),
        (10, 9, set(), ErrorCode.DONE),
    ],
)
def test_judge_sync_push(version, base, contributors, expected) -> None:
    verdict = judge_sync_push(
        version=version, base_version=base, worker="a", contributors=contributors, steps=10
    )
    assert verdict.code is expected
    assert verdict.accepted is (expected is None)
    if expected is ErrorCode.LATE:
        assert verdict.staleness == version - base


def test_judge_sync_push_grid() -> None:
    """Over a grid of states, exactly one gradient per worker per version is ever accepted."""
    for version, base in itertools.product(range(4), range(5)):
        accepted = [
            w
            for w in ("a", "b", "c")
            if judge_sync_push(
                version=version, base_version=base, worker=w, contributors={"a"}, steps=3
            ).accepted
        ]
        if version < 3 and base == version:
            assert accepted == ["b", "c"]
        else:
            assert accepted == []


@pytest.mark.parametrize(
    ("aggregate", "live", "expected"),
    [(4, None, 4), (4, 5, 4), (4, 4, 4), (4, 3, 3), (4, 1, 1), (4, 0, 1), (1, 9, 1)],
)
def test_required_contributions(aggregate, live, expected) -> None:
    assert required_contributions(aggregate, live) == expected


def test_sync_step_complete() -> None:
    assert [sync_step_complete(n, 3) for n in range(5)] == [False, False, False, True, True]


@pytest.mark.parametrize(
    ("policy", "staleness", "scale"),
    [
        (StalenessPolicy.NONE, 0, 1.0),
        (StalenessPolicy.NONE, 7, 1.0),
        (StalenessPolicy.INVERSE, 0, 1.0),
        (StalenessPolicy.INVERSE, 1, 1.0),
        (StalenessPolicy.INVERSE, 4, 0.25),
        (StalenessPolicy.INVERSE_PLUS_ONE, 0, 1.0),
        (StalenessPolicy.INVERSE_PLUS_ONE, 3, 0.25),
    ],
)
def test_staleness_scale(policy, staleness, scale) -> None:
    assert staleness_scale(staleness, policy) == scale


def async_verdict(**overrides):
    args = {
        "version": 10,
        "base_version": 10,
        "rank": 1,
        "steps": 100,
        "max_staleness": None,
        "policy": StalenessPolicy.NONE,
        "warmup_steps": 0,
    }
    return judge_async_push(**{**args, **overrides})


def test_judge_async_push() -> None:
    assert async_verdict().accepted
    assert async_verdict(base_version=4).staleness == 6
    assert async_verdict(base_version=4, max_staleness=6).accepted
    assert async_verdict(base_version=4, max_staleness=5).code is ErrorCode.STALE
    assert async_verdict(base_version=11).code is ErrorCode.FUTURE_VERSION
    assert async_verdict(version=100).code is ErrorCode.DONE
    scaled = async_verdict(base_version=6, policy=StalenessPolicy.INVERSE)
    assert scaled.accepted and scaled.scale == 0.25
    # Warmup: only rank 0 trains during the first W updates, then everyone.
    assert async_verdict(warmup_steps=11).code is ErrorCode.WARMUP
    assert async_verdict(warmup_steps=11, rank=0).accepted
    assert async_verdict(warmup_steps=10).accepted
    # Rank 0 gone: the lowest live rank leads the warmup instead.
    assert async_verdict(warmup_steps=11, rank=1, leader=1).accepted
    assert async_verdict(warmup_steps=11, rank=0, leader=1).code is ErrorCode.WARMUP

"""Membership decisions of the coordinator, as pure functions of the table and the clock."""

from __future__ import annotations

from coordinator.membership import (
    WorkerRecord,
    assign_rank,
    expired_workers,
    may_announce_membership,
    members_by_rank,
)


def table(**ranks: int) -> dict[str, WorkerRecord]:
    return {w: WorkerRecord(w, r, last_seen=100.0 + r) for w, r in ranks.items()}


def test_assign_rank() -> None:
    assert assign_rank({}, "a", 3) == 0
    assert assign_rank(table(a=0, b=2), "c", 3) == 1
    assert assign_rank(table(a=0, b=2), "b", 3) == 2  # a known worker keeps its rank
    # N + k ranks all taken: an elastic worker beyond them (a spare in sync mode), up to the cap.
    assert assign_rank(table(a=0, b=1, c=2), "d", 3) == 3
    assert assign_rank(table(a=0, b=1, c=2), "d", 3, cap=3) is None
    # A worker returning after a coordinator restart gets the rank it asks for, when free.
    assert assign_rank(table(a=0), "b", 3, preferred=2) == 2
    assert assign_rank(table(a=0), "b", 3, preferred=0) == 1
    assert assign_rank(table(a=0), "b", 3, preferred=7) == 1  # ranks below N + k first
    assert assign_rank(table(a=0, b=1, c=2), "d", 3, preferred=7) == 7


def test_expired_workers() -> None:
    workers = table(a=0, b=1, c=2)  # last seen at 100, 101, 102
    assert expired_workers(workers, now=104.5, lease_s=3.0) == ["a", "b"]
    assert expired_workers(workers, now=103.0, lease_s=3.0) == []
    assert expired_workers(workers, now=200.0, lease_s=3.0) == ["a", "b", "c"]


def test_members_by_rank() -> None:
    assert members_by_rank(table(a=0, b=1)) == {"a": 0, "b": 1}


def test_membership_is_announced_once_trustworthy() -> None:
    def may(registered: int, now: float, last_joined: float | None = 0.5) -> bool:
        return may_announce_membership(
            registered=registered, aggregate=4, now=now, last_joined=last_joined, grace_s=5.0
        )

    assert not may(3, 1.0)  # still assembling: 3 of N = 4 would make steps complete with 3
    assert may(4, 1.0)  # N are in: no step can close with fewer (a spare joins when it comes)
    # However long the others take to start: the grace runs from the latest registration.
    assert not may(3, 30.0, last_joined=26.0)
    assert may(3, 5.5)  # none came for one lease: whoever is not there is presumed dead
    assert not may(0, 100.0, last_joined=None)  # nobody to announce

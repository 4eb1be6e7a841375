"""The consistent cut's decisions as pure functions: which version every shard resumes from,
which checkpoints a shard may delete, when a rewind is done, and when a worker's view of the
shards agrees."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.recovery import Rewind, consistent_cut, plan_rewind
from ps_server.checkpoint import versions_to_delete
from ps_server.rules import judge_sync_push
from pscluster.protocol import ErrorCode
from worker.alignment import disagreeing


def test_the_cut_is_the_newest_version_every_shard_holds() -> None:
    assert consistent_cut([[10, 20, 30], [10, 20]]) == 20  # the second died before writing 30
    assert consistent_cut([[20, 30], [10, 30]]) == 30
    assert consistent_cut([[10], [20]]) == 0  # nothing in common: the seed's parameters
    assert consistent_cut([[], [10]]) == 0
    assert consistent_cut([]) == 0


def test_a_shard_keeps_what_a_cut_may_need() -> None:
    # Sync: everything from the version every shard holds on, and always the newest.
    assert versions_to_delete([10, 20, 30, 40], keep_from=30, keep_newest=16) == [10, 20]
    assert versions_to_delete([10, 20], keep_from=50, keep_newest=16) == [10]
    # Not told yet (the coordinator is down): the newest 16; async: the newest two.
    assert versions_to_delete(list(range(1, 21)), keep_from=None, keep_newest=16) == [1, 2, 3, 4]
    assert versions_to_delete([1, 2, 3], keep_from=None, keep_newest=2) == [1]


def test_a_restart_starts_a_rewind_that_lasts_until_every_shard_has_it() -> None:
    now = 1_700_000_000_000  # epochs are wall-clock milliseconds
    live = {"checkpoints": [10, 20, 30], "epoch": now - 5, "recovering": False, "version": 33}
    restarted = {"checkpoints": [10, 20], "epoch": 0, "recovering": True, "version": 0}
    assert plan_rewind([live, {**live, "version": 34}], None, now) is None  # nobody restarted
    rewind = plan_rewind([live, restarted], None, now)
    assert rewind == Rewind(version=20, epoch=now)
    # One shard has applied it, the other not yet: still pending; then done.
    assert plan_rewind([{**live, "epoch": now}, restarted], rewind, now) == rewind
    assert plan_rewind([{**live, "epoch": now}, {**restarted, "epoch": now}], rewind, now) == rewind
    done = {**restarted, "epoch": now, "recovering": False}
    assert plan_rewind([{**live, "epoch": now}, done], rewind, now) is None
    # Epochs only grow: above every shard's even if the clock is behind, and a new one after
    # everybody restarted and nobody remembers the last (workers may still hold that one).
    assert plan_rewind([{**live, "epoch": now + 9}, restarted], None, now) == Rewind(20, now + 10)
    start = {"checkpoints": [], "epoch": 0, "recovering": True, "version": 0}
    assert plan_rewind([start, start], None, now) == Rewind(version=0, epoch=now)


def test_a_gradient_of_another_epoch_is_refused() -> None:
    common = {"version": 20, "base_version": 20, "worker": "w", "contributors": (), "steps": 30}
    assert judge_sync_push(**common, epoch=2, base_epoch=2).accepted
    assert judge_sync_push(**common, epoch=2, base_epoch=1).code is ErrorCode.REWOUND
    assert judge_sync_push(**common, epoch=2).accepted  # a push that names no epoch


@dataclass
class View:
    version: int
    epoch: int = 1
    done: bool = False


def test_a_worker_computes_only_on_one_version_of_one_epoch() -> None:
    assert disagreeing([View(5), View(5)]) == {}
    # One shard behind (a reply timed out, a spare's step): long-poll it for the other's version.
    assert disagreeing([View(5), View(6)]) == {0: 5}
    # One shard rewound to the cut (epoch 2): what the worker holds of the other is from before
    # the rewind, however high its version; ask for its present state.
    assert disagreeing([View(20, epoch=2), View(22)]) == {1: -1}
    assert disagreeing([View(20, epoch=2), View(20)]) == {1: -1}
    assert disagreeing([View(30, done=True), View(29)]) == {}  # a finished shard is left out

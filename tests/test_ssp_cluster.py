"""`pscluster up --mode ssp`: no worker more than S steps ahead of the slowest, measured by the
shards and by the workers' own step counts; a dead worker holds the others no longer than its
lease."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_launcher import pscluster_up

SLOW = ["--delay", "fixed", "--delay-s", "0.004", "--slow-workers", "1", "--slow-factor", "5"]


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # Every other setting at its default (4 workers, 1200 steps, momentum 0.7), as a user would.
    tmp = tmp_path_factory.mktemp("ssp")
    return pscluster_up(
        tmp, "ssp2", "--mode", "ssp", "--ssp-bound", "2", "--eval-every", "400", *SLOW
    )


def test_ssp_with_defaults_trains(bounded: dict) -> None:
    assert bounded["mode"] == "ssp"
    assert bounded["steps"] == 1200
    assert bounded["accuracy"] >= 0.95


def test_no_step_started_more_than_s_ahead(bounded: dict) -> None:
    assert 1 <= bounded["max_clock_gap"] <= 2
    # The workers' own counts agree: the fast ones ran at most S (+ the step in flight when
    # the job ended) ahead of the slow one, plus the steps they made while it was still
    # starting: worker processes register up to a few hundred milliseconds apart, and one that
    # joins late starts at the slowest live clock (by design: it holds nobody back), so its own
    # count is lower by what the others did meanwhile (10% of the run at most here; with steps
    # of a few milliseconds that lag alone is several steps). Unbounded, the fast ones would run
    # about five times as many.
    steps = {w["worker_id"]: w["steps"] for w in bounded["workers"]}
    slow = steps.pop("worker0")
    assert slow > 100
    assert all(slow <= fast <= slow * 1.1 + 2 + 1 for fast in steps.values()), (slow, steps)


def test_a_dead_worker_blocks_no_longer_than_its_lease(tmp_path: Path) -> None:
    summary = pscluster_up(
        tmp_path,
        "ssp-kill",
        *("--mode", "ssp", "--ssp-bound", "1", "--workers", "3", "--steps", "300"),
        *("--heartbeat-lease-s", "1", "--poll-interval-s", "0.1", "--eval-every", "1000"),
        *("--kill", "worker1@20"),
    )
    assert summary["faults"]["worker1"] is not None  # the kill fired
    assert summary["steps"] == 300
    # Held at the gate for the lease, plus the coordinator's poll and its membership message.
    assert summary["max_gate_wait_seconds"] <= 1.0 + 2.5
    assert summary["max_clock_gap"] <= 1

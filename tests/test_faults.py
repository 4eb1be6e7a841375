"""Fault injection with real processes: SIGKILL a worker, a shard or the coordinator at a given
step; the run completes, and each test checks that its fault really fired."""

from __future__ import annotations

import pytest

from tests.test_launcher import pscluster_up

JOB = [
    "--shards",
    "2",
    "--workers",
    "3",
    "--spares",
    "1",
    "--steps",
    "150",
    "--seed",
    "0",
    "--checkpoint-every",
    "25",
    "--eval-every",
    "1000",
    "--heartbeat-lease-s",
    "3",
]
TARGET_ACCURACY = 0.93


@pytest.mark.parametrize("victim", ["worker1@30", "ps0@60", "coordinator@50"])
def test_run_survives_sigkill(tmp_path, victim: str) -> None:
    name, step = victim.split("@")
    run = pscluster_up(tmp_path, name, *JOB, "--kill", victim)
    fired = run["faults"][name]
    if name == "coordinator":
        # It sees the global step by polling the shards: it fires at the first one seen >= 50.
        assert int(step) <= fired < 150
    else:
        assert fired == int(step)  # the fault fired, at that very step
    assert run["steps"] == 150
    assert run["accuracy"] >= TARGET_ACCURACY
    # Each victim is restarted once, as compose's restart policy would (workers too).
    assert run["restarts"] == {name: 1}
    if name.startswith("worker"):
        # N = 3 live workers remain: no step ever waits for the dead one's lease to expire.
        assert run["max_gather_seconds"] < 3 / 2
        survivors = [w for w in run["workers"] if w["worker_id"] != name]
        assert all(w["steps"] > 100 for w in survivors)
    if name == "ps0":
        restored = run["shard_restored_from"][0]
        # It came back from its last checkpoint: at most one checkpoint interval lost.
        assert restored is not None and int(step) - 25 <= restored <= int(step)
        assert run["shard_restored_from"][1] is None
        # With a spare, sync recovery still resumes every shard from one version (the
        # consistent cut): never a mix of versions, though not bit-identical (which N of N + k
        # count depends on timing).
        assert run["shard_rewound_to"] == [restored, restored]

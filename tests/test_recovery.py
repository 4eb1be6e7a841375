"""Recovery that changes nothing: in sync mode with k = 0, a shard or the coordinator SIGKILLed at
any step, and the run ends with parameters and optimizer state bit-identical to the same job
without the kill, for SGD, momentum and Adam (shards rewind to a consistent cut, workers with
them, and batches are drawn by version). In async mode a restarted shard resumes from its own
newest checkpoint, alone.

Each kill run is a real ``pscluster up`` (processes, SIGKILL, the launcher's restart); the
reference is the same job in-process without any kill (ranks, not processes, decide batches and
fold order, so the two compare bit for bit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ps_server.checkpoint import CheckpointStore
from tests.cluster import local_cluster
from tests.test_launcher import pscluster_up

EVERY = 10  # checkpoint interval
JOB = {
    "shards": 2,
    "workers": 2,
    "spares": 0,
    "mode": "sync",
    "steps": 30,
    "model": "mlp",
    "hidden": "16",
    "dataset": "digits",
    "batch_size": 16,
    "lr": 0.1,
    "seed": 3,
    "checkpoint_every": EVERY,
    "eval_every": 1000,
}
# A few milliseconds a step, so that the coordinator (which sees the step by polling) fires
# while training is under way.
DELAY = ["--delay", "fixed", "--delay-s", "0.005"]


def flags(job: dict) -> list[str]:
    return [arg for k, v in job.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


async def reference(optimizer: str) -> dict[str, bytes]:
    """Every shard's final parameters and optimizer state, from the same job with no kill."""
    job = {**JOB, "optimizer": optimizer}
    async with local_cluster(job, workers=[{}, {}]) as cluster:
        status = await cluster.wait_done(90)
        assert status["step"] == JOB["steps"]
        final = {}
        for state in cluster.shard_states():
            arrays = {**state.params, **{f"opt/{k}": a for k, a in state.optimizer.state().items()}}
            final.update({f"{state.index}/{k}": np.asarray(a).tobytes() for k, a in arrays.items()})
        return final


def final_checkpoints(run_dir: Path) -> dict[str, bytes]:
    """The same, from the final checkpoint each shard wrote on its way out."""
    final = {}
    for index in range(JOB["shards"]):
        checkpoint = CheckpointStore(run_dir / f"ps{index}", index).newest_valid()
        assert checkpoint is not None and checkpoint.version == JOB["steps"]
        for key, array in checkpoint.arrays.items():
            if key.startswith(("param/", "opt/")):
                final[f"{index}/{key.removeprefix('param/')}"] = array.tobytes()
    return final


@pytest.mark.parametrize(
    ("optimizer", "kills"),
    [
        ("sgd", ["ps1@19"]),  # just before a checkpoint: the cut is the one before
        # At a checkpoint (the victim may die before writing it), then the coordinator.
        ("momentum", ["ps0@20", "coordinator@24"]),
        ("adam", ["ps1@21"]),  # just after one
    ],
)
async def test_a_kill_changes_no_bit(tmp_path: Path, optimizer: str, kills: list[str]) -> None:
    expected = await reference(optimizer)
    kill_flags = [arg for kill in kills for arg in ("--kill", kill)]
    name = f"kill-{optimizer}"
    run = pscluster_up(tmp_path, name, *flags({**JOB, "optimizer": optimizer}), *DELAY, *kill_flags)
    victims = {kill.split("@")[0]: int(kill.split("@")[1]) for kill in kills}
    assert run["steps"] == JOB["steps"]
    assert run["restarts"] == dict.fromkeys(victims, 1)
    shard, at = next((v, s) for v, s in victims.items() if v.startswith("ps"))
    assert run["faults"][shard] == at  # it fired, at that very version
    # Every shard rewound to one version that both had checkpointed (or 0), at most one
    # interval back.
    cut = run["shard_rewound_to"]
    assert cut[0] == cut[1] and cut[0] % EVERY == 0 and at - 2 * EVERY < cut[0] <= at, cut
    if "coordinator" in victims:
        assert run["faults"]["coordinator"] >= victims["coordinator"]
    else:  # a restarted coordinator does not remember the rewinds before its time
        assert run["recovery"]["rewinds"] == 1
    got = final_checkpoints(tmp_path / name)
    assert got.keys() == expected.keys()
    differ = [key for key in expected if got[key] != expected[key]]
    assert not differ, differ


def test_async_shard_resumes_alone_from_its_newest_checkpoint(tmp_path: Path) -> None:
    job = {**JOB, "mode": "async", "steps": 200, "checkpoint_every": 25}
    run = pscluster_up(tmp_path, "async", *flags(job), *DELAY, "--kill", "ps0@60")
    # Updates apply on arrival: the version may have moved on by another push or two.
    fired = run["faults"]["ps0"]
    assert 60 <= fired <= 60 + JOB["workers"] and run["restarts"] == {"ps0": 1}
    # Its own newest checkpoint, at most one interval back; the other shard went on as it was.
    restored = run["shard_restored_from"]
    assert fired - 25 <= restored[0] <= fired and restored[1] is None
    assert run["shard_rewound_to"] == [None, None] and run["recovery"]["rewinds"] == 0
    assert run["steps"] == 200 and run["accuracy"] >= 0.85

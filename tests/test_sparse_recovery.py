"""Recovery with sparse tables changes nothing either: the fm model on the clicks log, sync with
k = 0, a shard SIGKILLed mid-run, and the run ends with the dense parameters, their optimizer
state and every table (ids, rows, per-row optimizer state, last-update versions, admission
counts, counters) bit-identical to the same job without the kill.

Two combinations: dense momentum with sparse SGD, killed before the first checkpoint (the cut is
version 0: the live shard empties its tables), and dense Adam with sparse Adagrad, admission,
eviction by age and a capacity all on, killed just after a checkpoint (the cut is that
checkpoint: the live shard restores its tables from it, LRU clocks and pending counts included).
Each kill run is a real ``pscluster up``; the reference is the same job in-process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ps_server.checkpoint import CheckpointStore
from tests.cluster import local_cluster
from tests.test_launcher import pscluster_up
from tests.test_recovery import DELAY, flags

EVERY = 10
JOB: dict[str, Any] = {
    "shards": 2,
    "workers": 2,
    "spares": 0,
    "mode": "sync",
    "steps": 30,
    "model": "fm",
    "dataset": "clicks",
    "batch_size": 64,
    "lr": 0.05,
    "sparse_lr": 0.1,
    "seed": 5,
    "checkpoint_every": EVERY,
    "eval_every": 1000,
}
# Small enough that, with 64-impression batches, rows are dropped unadmitted, expire and are
# evicted for capacity within 30 versions (asserted below, so the policies are really exercised).
POLICIES = {"admit_after": 2, "evict_after": 12, "table_capacity": 600}
COMBINATIONS = {
    # Killed before the first checkpoint: the cut is version 0.
    "momentum-sgd": ({"optimizer": "momentum", "sparse_optimizer": "sgd"}, "ps1@5"),
    # Killed just after a checkpoint: the cut is that checkpoint, tables restored from it.
    "adam-adagrad": (
        {"optimizer": "adam", "sparse_optimizer": "adagrad", **POLICIES},
        "ps0@21",
    ),
}


async def reference(job: dict[str, Any]) -> dict[str, bytes]:
    """Every shard's final dense parameters, optimizer state and tables, with no kill."""
    async with local_cluster(job, workers=[{}, {}]) as cluster:
        status = await cluster.wait_done(90)
        assert status["step"] == job["steps"]
        final = {}
        for state in cluster.shard_states():
            arrays = {
                **state.params,
                **{f"opt/{k}": a for k, a in state.optimizer.state().items()},
                **state.tables.state_arrays(),
            }
            final.update({f"{state.index}/{k}": np.asarray(a).tobytes() for k, a in arrays.items()})
        return final


def final_checkpoints(run_dir: Path, steps: int) -> dict[str, bytes]:
    """The same, from the final checkpoint each shard wrote on its way out."""
    final = {}
    for index in range(JOB["shards"]):
        checkpoint = CheckpointStore(run_dir / f"ps{index}", index).newest_valid()
        assert checkpoint is not None and checkpoint.version == steps
        for key, array in checkpoint.arrays.items():
            if key.startswith(("param/", "opt/", "sparse/")):
                final[f"{index}/{key.removeprefix('param/')}"] = array.tobytes()
    return final


def counts(final: dict[str, bytes], shard: int, table: str) -> dict[str, int]:
    values = np.frombuffer(final[f"{shard}/sparse/{table}/counts"], dtype=np.int64)
    names = ("admitted", "evicted_expired", "evicted_capacity", "dropped_rows")
    return dict(zip(names, (int(v) for v in values), strict=True))


@pytest.mark.parametrize("combination", list(COMBINATIONS))
async def test_a_shard_kill_with_tables_changes_no_bit(tmp_path: Path, combination: str) -> None:
    settings, kill = COMBINATIONS[combination]
    job = {**JOB, **settings}
    expected = await reference(job)
    run = pscluster_up(tmp_path, combination, *flags(job), *DELAY, "--kill", kill)
    victim, at = kill.split("@")
    assert run["steps"] == job["steps"] and run["restarts"] == {victim: 1}
    assert run["faults"][victim] == int(at)  # it fired, at that very version
    # Both shards at the cut: the survivor rewound to it, the victim restored it (or, for
    # version 0, simply started there).
    cut, survivor = (int(at) // EVERY) * EVERY, 1 - int(victim[2:])
    rewound = run["shard_rewound_to"]
    assert rewound[survivor] == cut and rewound[1 - survivor] in (cut, None if cut == 0 else cut)
    assert run["recovery"]["rewinds"] == 1
    got = final_checkpoints(tmp_path / combination, job["steps"])
    assert got.keys() == expected.keys()
    assert any("/sparse/" in key for key in got)
    differ = [key for key in expected if got[key] != expected[key]]
    assert not differ, differ
    if "admit_after" in settings:
        # The policies did act in this run: their state is part of what compared equal.
        for shard in range(JOB["shards"]):
            for table in ("linear", "factors"):
                c = counts(got, shard, table)
                assert c["dropped_rows"] > 0 and c["evicted_expired"] > 0, c
                assert c["evicted_capacity"] > 0, c

"""The fm model on the clicks log in a real (in-process) cluster: two sync k = 0 runs whose
pushes arrive in opposite rank orders end with bit-identical dense parameters and tables, the
held-out AUC is reported beside the oracle's, evaluation creates no rows, and the shards'
metrics count the rows."""

from __future__ import annotations

from typing import Any

import aiohttp
import numpy as np

from pscluster.clicks import ClickLog
from pscluster.sampling import batch_indices
from tests.cluster import local_cluster

JOB = {
    "shards": 2,
    "workers": 3,
    "spares": 0,
    "mode": "sync",
    "steps": 10,
    "model": "fm",
    "dataset": "clicks",
    "optimizer": "momentum",
    "lr": 0.1,
    "sparse_optimizer": "adagrad",
    "batch_size": 256,
    "seed": 3,
    "eval_every": 100,
}


async def train(slowest_first: bool) -> tuple[dict[str, Any], list[dict[str, np.ndarray]], str]:
    factors = [3.0, 2.0, 1.0] if slowest_first else [1.0, 2.0, 3.0]
    workers = [{"delay": "fixed", "delay_s": 0.004, "delay_factor": f} for f in factors]
    async with local_cluster(JOB, workers=workers) as cluster:
        status = await cluster.wait_done(120)
        states = cluster.shard_states()
        arrays = [
            {
                **{f"param/{k}": p.copy() for k, p in s.params.items()},
                **{k: a.copy() for k, a in s.tables.state_arrays().items()},
            }
            for s in states
        ]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{cluster.shard_urls[0]}/metrics") as resp:
                metrics = await resp.text()
        assert cluster.coordinator.held_out_rows is not None
        planned = cluster.coordinator.held_out_rows.plan.ids["factors"]
        assert len(planned) == len(np.unique(cluster.coordinator.dataset.x_test))
    assert status["step"] == JOB["steps"]
    assert sum(status["gradients"]["dropped"].values()) == 0
    return status, arrays, metrics


def trained_ids() -> np.ndarray:
    """Every id the job's batches named: the rows the shards should hold, and no more."""
    log = ClickLog(JOB["seed"])
    names = []
    for rank in range(JOB["workers"]):
        for step in range(JOB["steps"]):
            index = batch_indices(
                log.n_train,
                JOB["batch_size"],
                seed=JOB["seed"],
                rank=rank,
                world=3,
                step=step,
                mode="sample",
            )
            names.append(log.train_batch(index)[0].reshape(-1))
    return np.unique(np.concatenate(names))


async def test_sync_runs_with_tables_are_bit_identical_and_report_auc() -> None:
    status, first, metrics = await train(True)
    _, second, _ = await train(False)
    for a, b in zip(first, second, strict=True):
        assert sorted(a) == sorted(b)
        for key in a:
            assert a[key].tobytes() == b[key].tobytes(), key
    # The rows are those the training batches named: pulls (workers' and the evaluation's)
    # created none.
    ids = np.sort(np.concatenate([shard["sparse/factors/ids"] for shard in first]))
    assert (ids == trained_ids()).all()
    assert 0.8 < status["oracle_auc"] < 0.9
    assert status["oracle_auc"] - 0.1 < status["auc"] < status["oracle_auc"]
    rows_on_shard0 = len(first[0]["sparse/factors/ids"])
    assert f'ps_sparse_rows{{shard="0",table="factors"}} {float(rows_on_shard0)}' in metrics
    assert 'ps_sparse_bytes_total{direction="pulled",shard="0"}' in metrics

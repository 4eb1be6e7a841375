"""Sync, k = 0, every worker live: two runs whose gradients reach the shards in opposite rank
orders end with bit-identical parameters (the shards fold each step in rank order)."""

from __future__ import annotations

import numpy as np

from tests.cluster import local_cluster

JOB = {
    "shards": 2,
    "workers": 4,
    "spares": 0,
    "mode": "sync",
    "steps": 15,
    "model": "mlp",
    "hidden": "16",
    "dataset": "digits",
    "optimizer": "momentum",
    "lr": 0.1,
    "batch_size": 16,
    "seed": 5,
    "eval_every": 100,
}


async def train(slowest_first: bool) -> dict[str, np.ndarray]:
    # A fixed simulated delay per step, larger for lower ranks (or for higher ones), so that the
    # pushes of a step arrive in opposite rank orders in the two runs.
    factors = [4.0, 3.0, 2.0, 1.0] if slowest_first else [1.0, 2.0, 3.0, 4.0]
    workers = [{"delay": "fixed", "delay_s": 0.004, "delay_factor": f} for f in factors]
    async with local_cluster(JOB, workers=workers) as cluster:
        status = await cluster.wait_done(90)
        params = await cluster.full_params()
    assert status["step"] == JOB["steps"]
    assert sum(status["gradients"]["dropped"].values()) == 0
    return params


async def test_opposite_arrival_orders_give_identical_bits() -> None:
    low_last, low_first = await train(True), await train(False)
    for name, value in low_last.items():
        assert value.tobytes() == low_first[name].tobytes(), name

"""Sync mode, k = 0, plain SGD: N workers with batch b equal one process with batch N*b."""

from __future__ import annotations

import numpy as np

from pscluster.datasets import load_dataset
from pscluster.models import build_model
from pscluster.sampling import batch_indices
from tests.cluster import local_cluster


def union_batch(job: dict, world: int, step: int, n_train: int) -> np.ndarray:
    """The indices of every worker's batch at ``step``, rank after rank: one batch of N*b."""
    return np.concatenate(
        [
            batch_indices(
                n_train,
                job["batch_size"],
                seed=job["seed"],
                rank=rank,
                world=world,
                step=step,
                mode=job["data_mode"],
            )
            for rank in range(world)
        ]
    )


def reference_sgd(job: dict, world: int) -> dict[str, np.ndarray]:
    """One process, plain SGD on the union of every worker's batch at each step."""
    data = load_dataset(job["dataset"], job["seed"])
    model = build_model(job["model"], data.n_features, data.n_classes, (int(job["hidden"]),))
    params = {k: v.astype(np.float64) for k, v in model.init_parameters(job["seed"]).items()}
    for step in range(job["steps"]):
        indices = union_batch(job, world, step, len(data.y_train))
        _, grads = model.loss_and_gradients(
            params, data.x_train[indices].astype(np.float64), data.y_train[indices]
        )
        for name in params:
            params[name] -= job["lr"] * grads[name]
    return params


async def test_sync_workers_equal_one_big_batch() -> None:
    job = {
        "shards": 2,
        "workers": 3,
        "spares": 0,
        "mode": "sync",
        "steps": 12,
        "model": "mlp",
        "hidden": "16",
        "dataset": "digits",
        "optimizer": "sgd",
        "lr": 0.2,
        "batch_size": 8,
        "seed": 3,
        "data_mode": "shard",
        "eval_every": 100,
    }
    async with local_cluster(job, workers=[{}, {}, {}]) as cluster:
        status = await cluster.wait_done(60)
        params = await cluster.full_params()
    assert status["step"] == 12
    # Every gradient counted, none dropped: 3 workers x 12 steps on each of 2 shards.
    assert status["gradients"]["applied"] == 3 * 12 * 2
    assert sum(status["gradients"]["dropped"].values()) == 0
    expected = reference_sgd(job, world=3)
    moved = 0.0
    for name, value in expected.items():
        err = np.linalg.norm(params[name] - value) / np.linalg.norm(value)
        assert err < 1e-5, (name, err)
        moved += float(np.abs(value - build_init(job)[name]).max())
    assert moved > 1e-2  # training really moved the parameters


def build_init(job: dict) -> dict[str, np.ndarray]:
    data = load_dataset(job["dataset"], job["seed"])
    model = build_model(job["model"], data.n_features, data.n_classes, (int(job["hidden"]),))
    return model.init_parameters(job["seed"])

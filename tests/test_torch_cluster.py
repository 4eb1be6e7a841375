"""A PyTorch model on the cluster: sync, k = 0, N workers with batch b end where
``torch.optim`` ends on one process with batch N*b on the same samples; shards never need torch."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from coordinator.app import build_app as coordinator_app
from pscluster.client import get_json, make_session
from pscluster.datasets import load_dataset
from pscluster.service import running_service
from pscluster.settings import CoordinatorSettings, WorkerSettings
from tests.cluster import TOKEN, local_cluster
from tests.processes import start
from tests.test_equivalence import union_batch
from worker.app import build_app as worker_app


def small_net(n_features: int, n_classes: int, hidden: tuple[int, ...]) -> nn.Module:
    return nn.Sequential(
        nn.Linear(n_features, hidden[0]), nn.Tanh(), nn.Linear(hidden[0], n_classes)
    )


# The reference runs in float64: what it measures is the cluster's own error.
DTYPE, DTYPE_NP = torch.float64, np.float64
JOB = {
    "shards": 2,
    "workers": 3,
    "spares": 0,
    "mode": "sync",
    "steps": 10,
    "model": f"{__name__}:small_net",
    "hidden": "16",
    "dataset": "digits",
    "batch_size": 8,
    "seed": 3,
    "data_mode": "shard",
    "eval_every": 100,
}
OPTIMIZERS = {
    "sgd": ({"optimizer": "sgd", "lr": 0.2}, lambda ps: torch.optim.SGD(ps, lr=0.2)),
    "momentum": (
        {"optimizer": "momentum", "lr": 0.1, "momentum": 0.9},
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    ),
    "adam": (
        {"optimizer": "adam", "lr": 0.01, "adam_form": "torch"},
        lambda ps: torch.optim.Adam(ps, lr=0.01),
    ),
}


def reference(job: dict, make_optimizer: object) -> tuple[dict, dict]:
    """One process: the module from the job's seed, in float64, ``torch.optim`` on the union
    of every worker's batch at each step. (initial, final) parameters."""
    data = load_dataset(job["dataset"], job["seed"])
    torch.manual_seed(job["seed"])  # the adapter's initialisation: the module's own, seeded
    module = small_net(data.n_features, data.n_classes, (int(job["hidden"]),)).to(DTYPE)
    initial = {n: p.detach().numpy().copy() for n, p in module.named_parameters()}
    optimizer = make_optimizer(list(module.parameters()))  # type: ignore[operator]
    for step in range(job["steps"]):
        indices = union_batch(job, job["workers"], step, len(data.y_train))
        x = torch.from_numpy(data.x_train[indices].astype(DTYPE_NP))
        optimizer.zero_grad()
        nn.functional.cross_entropy(module(x), torch.from_numpy(data.y_train[indices])).backward()
        optimizer.step()
    return initial, {n: p.detach().numpy() for n, p in module.named_parameters()}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
async def test_sync_torch_model_equals_torch_optim_on_one_big_batch(name: str) -> None:
    settings, make_optimizer = OPTIMIZERS[name]
    job = {**JOB, **settings}
    async with local_cluster(job, workers=[{}, {}, {}]) as cluster:
        status = await cluster.wait_done(60)
        params = await cluster.full_params()
    assert status["step"] == job["steps"]
    assert status["gradients"]["applied"] == 3 * job["steps"] * 2
    assert sum(status["gradients"]["dropped"].values()) == 0
    initial, expected = reference(job, make_optimizer)
    assert set(params) == set(expected) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    moved = 0.0
    for key, value in expected.items():
        err = np.linalg.norm(params[key] - value) / np.linalg.norm(value)
        assert err < 1e-5, (key, err)
        moved = max(moved, float(np.abs(value - initial[key]).max()))
    assert moved > 1e-2  # training really moved the parameters


async def test_a_torch_job_trains_with_a_shard_that_cannot_import_torch(tmp_path: Path) -> None:
    """The example user model, a coordinator and two workers in this process (with torch); the
    shard a process where ``import torch`` fails. It never needs it: it builds no model."""
    job = {
        **JOB,
        **{"shards": 1, "workers": 2, "steps": 60, "optimizer": "momentum", "lr": 0.1},
        **{"model": "examples.torch_mlp:build", "hidden": "32", "batch_size": 32},
        **{"data_mode": "sample", "eval_every": 20, "token": TOKEN, "poll_interval_s": 0.05},
    }
    settings = CoordinatorSettings(**job)
    shard: subprocess.Popen | None = None
    async with contextlib.AsyncExitStack() as stack:
        coord_url, _ = await stack.enter_async_context(
            running_service(lambda url: coordinator_app(settings, url), settings)
        )
        try:
            shard, _ = await asyncio.to_thread(
                start,
                "ps_server",
                tmp_path,
                "ps0",
                prelude="import sys; sys.modules['torch'] = None",
                PSC_TOKEN=TOKEN,
                PSC_COORDINATOR_URL=coord_url,
                PSC_REGISTER_INTERVAL_S="0.5",
            )
            for index in range(2):
                worker = WorkerSettings(
                    coordinator_url=coord_url, worker_id=f"w{index}", backend="numpy", token=TOKEN
                )
                await stack.enter_async_context(
                    running_service(lambda url, s=worker: worker_app(s, url), worker)
                )
            status = await wait_done(coord_url, timeout_s=90)
        finally:
            if shard is not None:
                shard.terminate()
                shard.wait(20)
    assert status["step"] == 60 and status["gradients"]["applied"] == 2 * 60
    assert status["accuracy"] > 0.9, status["history"]
    log = (tmp_path / "ps0.log").read_text()
    assert "Traceback" not in log and "holds" in log


async def wait_done(url: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    async with make_session(5.0) as session:
        while time.monotonic() < deadline:
            _, status = await get_json(session, f"{url}/status", 5.0)
            if status["phase"] == "done":
                return status
            await asyncio.sleep(0.1)
    raise TimeoutError(f"job not done within {timeout_s} s")

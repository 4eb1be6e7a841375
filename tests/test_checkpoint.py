"""Checkpoints: atomic files, verified on load; a corrupt newest one is reported and skipped."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import numpy as np
from prometheus_client import CollectorRegistry

from ps_server.checkpoint import CheckpointStore, CorruptCheckpoint
from ps_server.metrics import ShardMetrics
from ps_server.state import ShardState
from pscluster.messages import Push
from pscluster.settings import JobConfig


def make_state(**job: object) -> ShardState:
    config = JobConfig(**{"optimizer": "adam", "lr": 0.1, "steps": 100, "workers": 2, **job})
    params = {"w": np.arange(6, dtype=np.float32).reshape(3, 2), "b": np.ones(2, np.float32)}
    return ShardState(config, 0, params, ShardMetrics(CollectorRegistry()))


def grad(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((3, 2), value, np.float32), "b": np.full(2, value, np.float32)}


async def test_round_trip_restores_params_optimizer_version_and_step_in_progress(tmp_path) -> None:
    state = make_state()
    for version in range(3):
        await state.push(Push(worker="a", rank=0, base_version=version, grads=grad(1.0)))
        await state.push(Push(worker="b", rank=1, base_version=version, grads=grad(-0.5)))
    await state.push(Push(worker="a", rank=0, base_version=3, grads=grad(2.0)))  # half a step
    store = CheckpointStore(tmp_path, 0)
    version, body = await state.checkpoint_body()
    store.write(version, body)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-0-0000000003.psc"]  # no temp

    restored = make_state()
    restored.restore(store.newest_valid())
    assert restored.version == 3 and restored.restored_from == 3
    for key in state.params:
        np.testing.assert_array_equal(restored.params[key], state.params[key])
    # The rest of the step completes identically on both: sum and Adam state came back too.
    for s in (state, restored):
        await s.push(Push(worker="b", rank=1, base_version=3, grads=grad(4.0)))
        dup = await s.push(Push(worker="a", rank=0, base_version=3, grads=grad(4.0)))
        assert dup.code is not None and s.version == 4
    for key in state.params:
        np.testing.assert_array_equal(restored.params[key], state.params[key])


def test_corrupt_newest_is_reported_and_the_older_one_loads(tmp_path, caplog) -> None:
    state = make_state()
    store = CheckpointStore(tmp_path, 0)
    for version in (10, 20):
        state.version = version
        _, body = asyncio.run(state.checkpoint_body())
        store.write(version, body)
    newest = store.paths()[0]
    data = bytearray(newest.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit in the payload
    newest.write_bytes(bytes(data))
    try:
        store.load(newest)
    except CorruptCheckpoint as exc:
        assert "SHA-256" in str(exc)
    else:
        raise AssertionError("corrupt checkpoint loaded")
    with caplog.at_level(logging.ERROR):
        checkpoint = store.newest_valid()
    assert checkpoint is not None and checkpoint.version == 10
    assert "corrupt checkpoint skipped" in caplog.text and newest.name in caplog.text
    # Garbage (not even a frame) is reported the same way.
    newest.write_bytes(b"garbage")
    assert store.newest_valid().version == 10


def test_keeps_only_the_newest_two(tmp_path) -> None:
    state = make_state()
    store = CheckpointStore(tmp_path, 0)
    for version in range(5):
        state.version = version
        _, body = asyncio.run(state.checkpoint_body())
        store.write(version, body)
    assert [p.name for p in store.paths()] == [
        "checkpoint-0-0000000004.psc",
        "checkpoint-0-0000000003.psc",
    ]


def test_services_refuse_to_start_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSC_")}
    for module in ("coordinator", "ps_server", "worker"):
        result = subprocess.run(
            [sys.executable, "-m", module],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 2, module
        assert "PSC_TOKEN" in result.stderr and "PSC_INSECURE" in result.stderr, module

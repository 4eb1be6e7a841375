"""bench.sparse through a real shard: the shard's app and state in a helper process, its table
filled as bench.sparse fills the in-process one, driven over its data port on 127.0.0.1 by a
worker's ``ShardClient`` (``pscluster.datalink``).

The job is sync with one worker (each push closes its step: the path of every sync push, with
the rows held and summed; no periodic checkpoints), and the shard holds ``--dense`` float32
dense parameters beside the table (fm's bias is one). Per batch of ids:

- pull: a ``Pull`` naming the ids (``@emb/want``); the reply carries their rows (and the dense
  part, as every pull's reply does);
- push: a ``Push`` of the ids and their row gradients (and the dense part's gradient, as every
  sync push carries), not asking for parameters; the reply is the verdict alone;
- step: what a worker sends each step, the push with the next batch's ids and ``want_params``;
  the reply carries the next version's dense part and rows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import uvloop

from bench.common import Helper, serve_shard
from ps_server.sparse.policies import TablePolicy
from ps_server.sparse.tables import ShardTables
from pscluster.models.sparse import NormalInit, TableSpec
from pscluster.sparse_wire import ids_key, rows_key, want_key

TABLE = "emb"
STD = 0.01
CHUNK = 100_000


def serve(rows: int, dim: int, dense: int, lr: float) -> None:
    """The shard's real app around a ``ShardState`` with one table of ``rows`` rows."""
    from ps_server.state import ShardState
    from pscluster.settings import JobConfig

    # No periodic checkpoints: their copy of the whole table is not the step's cost.
    settings = {"mode": "sync", "optimizer": "sgd", "lr": lr, "checkpoint_every": 0}
    job = JobConfig(shards=1, workers=1, spares=0, steps=10**9, **settings)
    tables = filled_table(rows, dim, lr)

    def state(metrics: Any) -> ShardState:
        shard = ShardState(job, 0, {"dense": np.zeros(dense, np.float32)}, metrics)
        shard.tables = tables
        return shard

    serve_shard(state, max_body_mb=64)


def filled_table(rows: int, dim: int, lr: float) -> ShardTables:
    """One shard's table (Adagrad) with rows 0 .. rows - 1 created (one update of zero
    gradients each, as version 1)."""
    tables = ShardTables(
        {TABLE: TableSpec(TABLE, dim, NormalInit(STD))},
        seed=0,
        policy=TablePolicy(optimizer="adagrad", lr=lr),
        shard=0,
        num_shards=1,
    )
    table = tables.tables[TABLE]
    for start in range(0, rows, CHUNK):
        ids = np.arange(start, min(rows, start + CHUNK), dtype=np.int64)
        table.apply(ids, np.zeros((len(ids), dim), np.float32), np.ones(len(ids), np.int64), 1)
    return tables


class PortClient:
    """One worker's ``ShardClient`` against the helper's data port, on its own uvloop loop."""

    def __init__(self, address: str, dense: int) -> None:
        from worker.shard_client import ShardClient

        url, token = address.split()
        self.loop = uvloop.new_event_loop()
        self.client = ShardClient(url, 0, token=token, timeout_s=60.0)
        self.dense = dense
        self.dense_grad = np.zeros(dense, np.float32)  # a sync push carries every dense part
        self.version = 0
        self.pull(np.zeros(1, np.int64))  # connect, learn the version

    def _run(self, call: Callable[[], Awaitable[Any]]) -> Any:
        return self.loop.run_until_complete(call())

    def pull(self, ids: np.ndarray) -> int:
        reply = self._run(lambda: self.client.pull(arrays={want_key(TABLE): ids}))
        got = reply.arrays[rows_key(TABLE)]
        if got.shape[0] != len(ids) or reply.arrays["dense"].size != self.dense:
            raise RuntimeError(f"pull answered {reply.status} with rows {got.shape}")
        self.version = reply.version
        return int(got.nbytes)

    def push(self, ids: np.ndarray, grads: np.ndarray, wants: np.ndarray | None) -> int:
        """One sync step's push; with ``wants``, asking for the parameters and those rows."""
        arrays = {"dense": self.dense_grad, ids_key(TABLE): ids, rows_key(TABLE): grads}
        if wants is not None:
            arrays[want_key(TABLE)] = wants
        reply = self._run(
            lambda: self.client.push(
                worker="w0",
                rank=0,
                step=self.version,
                base_version=self.version,
                grads=arrays,
                want_params=wants is not None,
            )
        )
        if reply.status.value != "applied" or reply.version != self.version + 1:
            raise RuntimeError(f"push at {self.version} answered {reply.status} {reply.version}")
        self.version = reply.version
        if wants is None:
            return 0
        got = reply.arrays[rows_key(TABLE)]
        if got.shape[0] != len(wants) or reply.arrays["dense"].size != self.dense:
            raise RuntimeError(f"step reply carried rows {got.shape}")
        return int(got.nbytes)

    def close(self) -> None:
        self.client.close()
        self.loop.close()


def helper(rows: int, dim: int, dense: int, lr: float) -> Helper:
    args = ["-m", "bench.sparse", "serve", "--rows", str(rows), "--dim", str(dim)]
    return Helper([*args, "--dense", str(dense), "--lr", str(lr)], timeout_s=120.0)

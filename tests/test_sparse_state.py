"""Sparse tables inside the shard's state, no sockets: a sync step's rows are the mean over the
workers (one big batch in one process gives the same), two runs in different arrival orders end
bit-identical (dense momentum with sparse Adagrad, dense Adam with sparse SGD), and a checkpoint
carries the tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ps_server.checkpoint import CheckpointStore
from ps_server.metrics import ShardMetrics
from ps_server.sparse.setup import build_tables
from ps_server.state import ShardState
from pscluster.jobspec import Registration
from pscluster.messages import Push, Reply, Status
from pscluster.models.fm import FactorizationMachine
from pscluster.models.sparse import Rows
from pscluster.protocol import ErrorCode, ProtocolError, decode_frame, to_wire
from pscluster.settings import JobConfig
from pscluster.sharding import compute_shard_map, slice_part
from pscluster.sparse_batches import SparseBatches, dense_grads
from pscluster.sparse_wire import rows_key, want_key
from tests.test_clicks import small_log

LOG = small_log(n_train=20_000)
MODEL = FactorizationMachine(len(LOG.fields), factors=4)
SHARDS = 2


def cluster(**job: object) -> list[ShardState]:
    """Both shards' states of a sync FM job, built as the shards build them."""
    config = {"workers": 3, "shards": SHARDS, "steps": 100, "optimizer": "sgd", "lr": 0.1}
    registration = Registration(
        job=JobConfig(**{**config, **job}),
        n_features=len(LOG.fields),
        n_classes=2,
        shard_map=compute_shard_map(MODEL.parameter_shapes(), SHARDS),
        shard_urls=[None] * SHARDS,
        tables=tuple(MODEL.tables().values()),
    )
    full = MODEL.init_parameters(0)
    states = []
    for index, parts in enumerate(registration.shard_map):
        params = {p.key: slice_part(full[p.param], p).copy() for p in parts}
        state = ShardState(registration.job, index, params, ShardMetrics(CollectorRegistry()))
        state.tables = build_tables(registration, index)
        states.append(state)
    return states


def pull(states: list[ShardState], batches: SparseBatches, x: np.ndarray) -> dict[str, object]:
    """What a worker's pull gets for batch ``x``: the dense arrays and the batch's rows."""
    batch = batches.plan(x)
    dense: dict[str, np.ndarray] = {}
    for index, state in enumerate(states):
        wants = state.parse_sparse(batches.wants(batch, index)).wants
        assert batches.absorb(batch, index, state.rows_reply(wants))
        dense.update({k: p.copy() for k, p in state.params.items()})
    return batches.params(batch, dense)


async def step(
    states: list[ShardState],
    batches: SparseBatches,
    xs: list[np.ndarray],
    ys: list[np.ndarray],
    order: list[int],
) -> None:
    """One sync step of three workers (their pushes arriving in ``order``)."""
    for state in states:
        if state.members is None:
            # Known ranks: the shards fold each step in rank order (ps_server/fold_order.py).
            await state.set_members({f"w{rank}": rank for rank in range(3)})
    computed = {}
    for rank in range(3):
        params = pull(states, batches, xs[rank])
        _, grads = MODEL.loss_and_gradients(params, xs[rank], ys[rank])
        computed[rank] = (batches.plan(xs[rank]), grads)
    for rank in order:
        batch, grads = computed[rank]
        for index, state in enumerate(states):
            arrays = batches.grads(batch, grads, index, "float32")
            sparse = state.parse_sparse(arrays)
            dense = {
                k: g for k, g in dense_grads(grads, batches.specs).items() if k in state.params
            }
            message = Push(f"w{rank}", rank, state.version, shard=index, grads=dense)
            await state.push(message, sparse)


def batches_of(step_index: int, size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(step_index)
    drawn = [LOG.train_batch(rng.choice(LOG.n_train, size, replace=False)) for _ in range(3)]
    return [x for x, _ in drawn], [y for _, y in drawn]


def table_rows(states: list[ShardState], table: str, ids: np.ndarray) -> np.ndarray:
    """The rows of ``ids`` as the shards hold them (a batch naming just those ids)."""
    rows = pull(states, SparseBatches(MODEL, SHARDS), np.repeat(ids[:, None], len(LOG.fields), 1))
    values: np.ndarray = rows[table].values  # type: ignore[attr-defined]  # a Rows
    return values


async def test_sync_rows_are_the_mean_over_workers_as_one_big_batch() -> None:
    states = cluster(sparse_optimizer="sgd", sparse_lr=0.5)
    batches = SparseBatches(MODEL, SHARDS)
    xs, ys = batches_of(0)
    await step(states, batches, xs, ys, [0, 1, 2])
    assert all(s.version == 1 for s in states)
    # One process, one batch of all three workers' examples: the mean gradient over 192.
    x, y = np.concatenate(xs), np.concatenate(ys)
    ids = np.unique(x)
    start = {n: spec.init(0, n, ids, spec.dim) for n, spec in MODEL.tables().items()}
    params = {"bias": np.zeros(1, np.float32), **{n: Rows(ids, v) for n, v in start.items()}}
    _, grads = MODEL.loss_and_gradients(params, x, y)
    for name in ("linear", "factors"):
        expected = start[name] - 0.5 * grads[name].values
        np.testing.assert_allclose(table_rows(states, name, ids), expected, rtol=1e-5, atol=1e-7)
    bias_shard = next(s for s in states if "bias" in s.params)
    np.testing.assert_allclose(bias_shard.params["bias"], -0.1 * grads["bias"], rtol=1e-5)
    # Rows no worker touched were not created; the pulls created nothing either.
    assert sum(s.tables.tables["linear"].rows for s in states if s.tables) == len(ids)


@pytest.mark.parametrize(("dense", "rows"), [("momentum", "adagrad"), ("adam", "sgd")])
async def test_sync_runs_with_tables_are_bit_identical_whatever_the_arrival_order(
    tmp_path: Path, dense: str, rows: str
) -> None:
    runs = []
    optimizers = {"optimizer": dense, "sparse_optimizer": rows, "sparse_lr": 0.1}
    for order in ([0, 1, 2], [2, 0, 1]):
        states = cluster(**optimizers)
        batches = SparseBatches(MODEL, SHARDS)
        for s in range(4):
            xs, ys = batches_of(s)
            await step(states, batches, xs, ys, order if s % 2 else order[::-1])
        runs.append(states)
    for a, b in zip(*runs, strict=True):
        assert a.version == b.version == 4
        assert set(a.params) == set(b.params)
        assert all((a.params[k] == b.params[k]).all() for k in a.params)
        assert a.tables is not None and b.tables is not None
        sa, sb = a.tables.state_arrays(), b.tables.state_arrays()
        assert sorted(sa) == sorted(sb) and all((sa[k] == sb[k]).all() for k in sa)
        assert len(sa["sparse/factors/ids"]) > 100

    # Checkpoint and restore: the tables come back exactly, and training resumes identically.
    original = runs[0]
    restored = cluster(**optimizers)
    for index, (state, fresh) in enumerate(zip(original, restored, strict=True)):
        version, body = await state.checkpoint_body()
        store = CheckpointStore(tmp_path / str(index), index)
        store.write(version, body)
        checkpoint = store.newest_valid()
        assert checkpoint is not None
        fresh.restore(checkpoint)
        assert fresh.tables is not None and state.tables is not None
        sa, sb = state.tables.state_arrays(), fresh.tables.state_arrays()
        assert sorted(sa) == sorted(sb) and all((sa[k] == sb[k]).all() for k in sa)
    batches = SparseBatches(MODEL, SHARDS)
    xs, ys = batches_of(9)
    await step(original, batches, xs, ys, [0, 1, 2])
    await step(restored, batches, xs, ys, [1, 2, 0])
    for a, b in zip(original, restored, strict=True):
        assert a.tables is not None and b.tables is not None
        sa, sb = a.tables.state_arrays(), b.tables.state_arrays()
        assert all((sa[k] == sb[k]).all() for k in sa)
        assert all((a.params[k] == b.params[k]).all() for k in a.params)


def test_a_pull_of_ids_on_another_shard_is_refused() -> None:
    states = cluster()
    batches = SparseBatches(MODEL, SHARDS)
    batch = batches.plan(LOG.train_batch(np.arange(50))[0])
    wants = batches.wants(batch, 1)
    with pytest.raises(ProtocolError) as refused:
        states[0].parse_sparse(wants)
    assert refused.value.code is ErrorCode.WRONG_SHARD
    assert set(wants) == {want_key("linear"), want_key("factors")}


async def test_async_rows_apply_as_each_push_arrives() -> None:
    states = cluster(mode="async", sparse_optimizer="sgd", sparse_lr=1.0)
    batches = SparseBatches(MODEL, SHARDS)
    xs, ys = batches_of(3)
    params = pull(states, batches, xs[0])
    _, grads = MODEL.loss_and_gradients(params, xs[0], ys[0])
    batch = batches.plan(xs[0])
    for index, state in enumerate(states):
        sparse = state.parse_sparse(batches.grads(batch, grads, index, "float32"))
        dense = {k: g for k, g in grads.items() if k in state.params}
        await state.push(Push("w0", 0, 0, shard=index, grads=dense), sparse)
        assert state.version == 1  # one push, one version: no step to gather
    ids = batch.ids["factors"]
    start = MODEL.tables()["factors"].init(0, "factors", ids, 4)
    got = table_rows(states, "factors", ids)
    np.testing.assert_allclose(got, start - grads["factors"].values, rtol=1e-6, atol=1e-7)


async def test_rows_travel_in_the_wire_dtype() -> None:
    states = cluster(wire_dtype="bfloat16")
    batches = SparseBatches(MODEL, SHARDS)
    batch = batches.plan(LOG.train_batch(np.arange(20))[0])
    for index, state in enumerate(states):
        wants = state.parse_sparse(batches.wants(batch, index)).wants
        reply = Reply(Status.OK, state.version)
        frame = await state.frame_with_rows(reply, with_params=True, wants=wants)
        arrays = decode_frame(frame.tobytes()).arrays
        rows = arrays[rows_key("factors")]
        assert rows.dtype.name == "bfloat16"
        exact = state.rows_reply(wants)[rows_key("factors")]
        np.testing.assert_allclose(rows.astype(np.float32), exact, rtol=1e-2)
        assert batches.absorb(batch, index, arrays)
    assert batch.values["factors"].dtype == np.float32 and np.abs(batch.values["factors"]).max() > 0


async def test_a_live_shard_rewinds_its_tables_to_the_cut(tmp_path: Path) -> None:
    """sync recovery on a shard that did not restart: a rewind to a checkpointed version brings
    back that version's tables (rows, per-row state, last-update versions, admission counts,
    counters), a rewind to version 0 empties them."""
    policies = {"sparse_optimizer": "adagrad", "admit_after": 2, "evict_after": 2}
    states = cluster(**policies)
    batches = SparseBatches(MODEL, SHARDS)
    for s in range(3):
        await step(states, batches, *batches_of(s), [0, 1, 2])
    bodies = [await state.checkpoint_body() for state in states]
    at_cut = [state.tables.state_arrays() for state in states if state.tables]
    assert all(len(arrays["sparse/factors/pending_ids"]) > 0 for arrays in at_cut)
    assert all(arrays["sparse/factors/counts"][1] > 0 for arrays in at_cut)  # some expired
    for s in range(3, 5):
        await step(states, batches, *batches_of(s), [2, 1, 0])
    for index, (state, (version, body)) in enumerate(zip(states, bodies, strict=True)):
        store = CheckpointStore(tmp_path / str(index), index)
        checkpoint = store.load(store.write(version, body))
        initial = {k: p.copy() for k, p in cluster()[index].params.items()}
        assert await state.rewind(
            version=3, epoch=7, members=None, checkpoint=checkpoint, initial=None
        )
        assert state.version == 3 and state.rewound_to == 3 and state.tables is not None
        now = state.tables.state_arrays()
        assert sorted(now) == sorted(at_cut[index])
        assert all((now[k] == at_cut[index][k]).all() for k in now), index
        assert await state.rewind(
            version=0, epoch=8, members=None, checkpoint=None, initial=initial
        )
        empty = state.tables.tables["factors"]
        assert state.version == 0 and empty.rows == 0 and empty.pending.size == 0
        assert empty.counts.admitted == 0 and state.tables.held == {}


async def test_a_shard_without_dense_parameters_still_reports_their_version() -> None:
    """fm's bias lives on one shard; the other's replies carry no dense array, yet say that
    they carry its parameters of their version (a worker aligning on versions needs it)."""
    empty = next(state for state in cluster() if not state.params)
    pulled = Reply.parse(decode_frame((await empty.encoded_params({"status": "ok"})).tobytes()))
    assert pulled.params and not pulled.arrays and pulled.version == 0
    frame = await empty.reply_frame(Reply(Status.OK, 0), with_params=False)  # header alone
    assert not Reply.parse(decode_frame(frame.tobytes())).params


@pytest.mark.parametrize("wire", ["float32", "bfloat16"])
async def test_a_reply_with_rows_lends_its_versions_dense_frame(wire: str) -> None:
    """After an update the dense part of a reply with rows is the version's frame, lent (not
    copied), with the rows packed after it; an update while it is held goes out of place, so
    the reply's bytes stay those of its version."""
    states = cluster(wire_dtype=wire)
    batches = SparseBatches(MODEL, SHARDS)
    await step(states, batches, *batches_of(0), [0, 1, 2])
    state = next(s for s in states if s.params)  # the shard holding fm's bias
    batch = batches.plan(batches_of(1)[0][0])
    wants = state.parse_sparse(batches.wants(batch, state.index)).wants
    assert state._snapshot is not None  # the update made the version's frame
    frame = await state.frame_with_rows(Reply(Status.OK, 1), with_params=True, wants=wants)
    assert state._snapshot.lent
    sent = frame.tobytes()
    reply = Reply.parse(decode_frame(sent))
    assert reply.params and reply.version == 1
    bias = state.params["bias"].copy()
    assert reply.arrays["bias"].tobytes() == to_wire(bias, wire).tobytes()
    exact = state.rows_reply(wants)[rows_key("factors")]
    assert reply.arrays[rows_key("factors")].dtype.name == wire
    np.testing.assert_allclose(reply.arrays[rows_key("factors")].astype(np.float32), exact, 1e-2)
    await step(states, batches, *batches_of(1), [0, 1, 2])
    assert state.version == 2 and not (state.params["bias"] == bias).all()
    assert frame.tobytes() == sent  # the held loan kept version 1's bytes

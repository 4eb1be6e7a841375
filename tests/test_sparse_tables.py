"""Shard-side embedding tables, without sockets: the id index, placement over shards, seeded
rows, admission, eviction, per-row optimizers, sync sums, bad input and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from ps_server.sparse.index import IdIndex
from ps_server.sparse.policies import TablePolicy, least_recent
from ps_server.sparse.table import SparseTable
from ps_server.sparse.tables import ShardTables, SparsePush
from pscluster.idhash import hash_columns, hash_ids, shard_of_ids
from pscluster.models.sparse import NormalInit, TableSpec
from pscluster.protocol import ErrorCode, ProtocolError
from pscluster.sparse_wire import MAX_IDS, ids_key, rows_key, want_key

SPEC = TableSpec("emb", 3, NormalInit(0.1))


def table(**policy: object) -> SparseTable:
    return SparseTable(SPEC, 7, TablePolicy(**policy))  # type: ignore[arg-type]  # test kwargs


def ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_index_agrees_with_a_dict_through_inserts_deletes_and_growth() -> None:
    rng = np.random.default_rng(0)
    index, reference = IdIndex(), {}
    next_slot = 0
    for _ in range(30):
        fresh = np.setdiff1d(rng.integers(0, 1 << 62, 5000), list(reference))
        # Ids that collide in the low bits, too: probes must walk past each other.
        fresh = np.union1d(fresh, np.setdiff1d(rng.integers(0, 64, 20) << 40, list(reference)))
        slots = np.arange(next_slot, next_slot + len(fresh))
        next_slot += len(fresh)
        index.insert(fresh, slots)
        reference.update(zip(fresh.tolist(), slots.tolist(), strict=True))
        gone = rng.choice(list(reference), len(reference) // 4, replace=False)
        index.delete(gone)
        for g in gone.tolist():
            del reference[g]
        probe = np.concatenate([np.array(list(reference)[:3000]), gone[:1000], ids(5, 6)])
        expected = [reference.get(p, -1) for p in probe.tolist()]
        assert index.lookup(probe).tolist() == expected
    assert index.size == len(reference)
    live_ids, live_slots = index.items()
    assert dict(zip(live_ids.tolist(), live_slots.tolist(), strict=True)) == reference
    with pytest.raises(KeyError):
        index.delete(ids(3))


def test_placement_over_shards_is_balanced_and_shared() -> None:
    everything = np.arange(1_000_000, dtype=np.int64)
    counts = np.bincount(shard_of_ids(everything, 4), minlength=4)
    assert np.abs(counts / len(everything) - 0.25).max() < 0.002
    assert (shard_of_ids(everything[::-7], 4) == shard_of_ids(everything, 4)[::-7]).all()


def test_rows_start_from_the_seeded_initialiser_whatever_the_order() -> None:
    a, b = table(optimizer="sgd"), table(optimizer="sgd")
    zero = np.zeros((4, 3), dtype=np.float32)
    a.apply(ids(1, 2, 3, 4), zero, np.ones(4, np.int64), 1)
    b.apply(ids(4, 2), zero[:2], np.ones(2, np.int64), 1)
    b.apply(ids(3, 1), zero[:2], np.ones(2, np.int64), 2)
    expected = NormalInit(0.1)(7, "emb", ids(4, 3, 2, 1), 3)
    assert (a.read(ids(4, 3, 2, 1)) == expected).all()
    assert (b.read(ids(4, 3, 2, 1)) == expected).all()
    # A row without an update reads as its initial values, and reading creates nothing.
    assert (a.read(ids(99)) == NormalInit(0.1)(7, "emb", ids(99), 3)).all()
    assert a.rows == 4
    other = SparseTable(SPEC, 8, TablePolicy()).read(ids(4))
    assert not (other == expected[:1]).all()


def test_sgd_and_adagrad_update_only_the_rows_in_the_step() -> None:
    g = np.array([[0.5, -1.0, 2.0]], dtype=np.float32)
    for name in ("sgd", "adagrad"):
        t = table(optimizer=name, lr=0.1)
        t.apply(ids(1, 2), np.zeros((2, 3), np.float32), np.ones(2, np.int64), 1)
        before = t.read(ids(1, 2))
        t.apply(ids(1), g, np.ones(1, np.int64), 2)
        t.apply(ids(1), g, np.ones(1, np.int64), 3)
        after = t.read(ids(1, 2))
        assert (after[1] == before[1]).all()
        if name == "sgd":
            expected = before[0] - 2 * np.float32(0.1) * g[0]
        else:
            # Adagrad: sums of squares g**2 then 2 g**2 (the zero step added nothing).
            first = before[0] - np.float32(0.1) * g[0] / (np.abs(g[0]) + 1e-8)
            expected = first - np.float32(0.1) * g[0] / (np.sqrt(2 * g[0] ** 2) + 1e-8)
        np.testing.assert_allclose(after[0], expected, rtol=1e-6)


def test_admission_drops_and_counts_until_the_nth_push() -> None:
    t = table(admit_after=3, optimizer="sgd", lr=1.0)
    g = np.ones((2, 3), dtype=np.float32)
    t.apply(ids(5, 6), g, np.ones(2, np.int64), 1)
    t.apply(ids(5), g[:1], np.ones(1, np.int64), 2)
    assert t.rows == 0 and t.counts.dropped_rows == 3
    assert (t.read(ids(5, 6)) == 0).all()  # the default row
    t.apply(ids(5, 6), g, np.array([1, 1]), 3)  # 5: third push; 6: second
    assert t.rows == 1 and t.counts.admitted == 1 and t.counts.dropped_rows == 4
    init = NormalInit(0.1)(7, "emb", ids(5), 3)
    np.testing.assert_allclose(t.read(ids(5)), init - 1.0)
    t.apply(ids(6), g[:1], np.array([2]), 4)  # a sync step where two workers named it
    assert t.rows == 2 and t.counts.dropped_rows == 4


def test_rows_untouched_for_evict_after_versions_go() -> None:
    t = table(evict_after=3, optimizer="sgd", lr=1.0)
    g = np.ones((1, 3), dtype=np.float32)
    t.apply(ids(1), g, np.ones(1, np.int64), 1)
    t.apply(ids(2), g, np.ones(1, np.int64), 2)
    t.apply(ids(2), g, np.ones(1, np.int64), 3)
    assert t.rows == 2
    t.apply(ids(2), g, np.ones(1, np.int64), 4)  # 1 last touched at 1 <= 4 - 3
    assert t.rows == 1 and t.counts.evicted_expired == 1
    assert (t.read(ids(1)) == NormalInit(0.1)(7, "emb", ids(1), 3)).all()  # as new again
    assert (table(evict_after=0).read(ids(1)) == t.read(ids(1))).all()


def test_lru_beyond_capacity_keeps_the_most_recent_rows() -> None:
    t = SparseTable(TableSpec("emb", 3, NormalInit(0.1), capacity=3), 7, TablePolicy())
    g = np.ones((1, 3), dtype=np.float32)
    for version, i in enumerate([10, 11, 12, 10], start=1):
        t.apply(ids(i), g, np.ones(1, np.int64), version)
    t.apply(ids(13, 14), np.ones((2, 3), np.float32), np.ones(2, np.int64), 5)
    assert t.rows == 3 and t.counts.evicted_capacity == 2
    assert sorted(t.index.items()[0].tolist()) == [10, 13, 14]
    # Ties between equally old rows go to the smaller id.
    assert least_recent(ids(5, 3, 3, 9), ids(1, 8, 2, 4), 1).tolist() == [2]
    assert sorted(least_recent(ids(5, 3, 3, 9), ids(1, 8, 2, 4), 3).tolist()) == [0, 1, 2]


def shard_tables(shard: int = 0, num_shards: int = 1, **policy: object) -> ShardTables:
    return ShardTables(
        {"emb": SPEC, "other": TableSpec("other", 2)},
        seed=7,
        policy=TablePolicy(**policy),  # type: ignore[arg-type]  # test kwargs
        shard=shard,
        num_shards=num_shards,
    )


def push(table_ids: np.ndarray, rows: np.ndarray, *, table_name: str = "emb") -> SparsePush:
    return SparsePush({table_name: (table_ids, rows.astype(np.float32))})


def test_sync_step_is_the_mean_over_workers_in_any_arrival_order() -> None:
    rng = np.random.default_rng(1)
    pieces = {
        rank: (np.unique(rng.integers(0, 40, 25)), rng.standard_normal((40, 3)))
        for rank in range(3)
    }
    results = []
    for order in ([0, 1, 2], [2, 0, 1]):
        tables = shard_tables(optimizer="sgd", lr=0.5)
        for rank in order:
            i, r = pieces[rank]
            tables.hold(rank, push(i, r[: len(i)]))
        tables.close_step(1 / 3, 1)
        results.append(tables.tables["emb"].read(np.arange(40)))
    assert (results[0] == results[1]).all()  # bit for bit
    # One process: the mean over the workers' gradients (a row no worker sent counts 0).
    total = np.zeros((40, 3))
    for i, r in pieces.values():
        total[i] += r[: len(i)]
    start = NormalInit(0.1)(7, "emb", np.arange(40), 3)
    np.testing.assert_allclose(results[0], start - 0.5 * total / 3, rtol=1e-5, atol=1e-6)


def test_bad_sparse_input_is_refused_with_its_code() -> None:
    tables = shard_tables()
    good_rows = np.zeros((2, 3), np.float32)

    def refused(arrays: dict[str, np.ndarray]) -> ErrorCode:
        with pytest.raises(ProtocolError) as caught:
            tables.parse(arrays)
        return caught.value.code

    assert refused({ids_key("emb"): ids(1, -2), rows_key("emb"): good_rows}) is ErrorCode.BAD_ID
    assert refused({ids_key("emb"): ids(4, 4), rows_key("emb"): good_rows}) is (
        ErrorCode.DUPLICATE_ID
    )
    assert refused({want_key("emb"): ids(9, 3, 9)}) is ErrorCode.DUPLICATE_ID
    huge = np.arange(MAX_IDS + 1, dtype=np.int64)
    assert refused({want_key("emb"): huge}) is ErrorCode.TOO_MANY_IDS
    wrong = {ids_key("emb"): ids(1, 2), rows_key("emb"): np.zeros((2, 4), np.float32)}
    assert refused(wrong) is ErrorCode.BAD_SHAPE
    as_int = {ids_key("emb"): ids(1, 2).astype(np.int32), rows_key("emb"): good_rows}
    assert refused(as_int) is ErrorCode.BAD_DTYPE
    nan = good_rows.copy()
    nan[1, 2] = np.nan
    assert refused({ids_key("emb"): ids(1, 2), rows_key("emb"): nan}) is ErrorCode.NOT_FINITE
    assert refused({ids_key("emb"): ids(1, 2)}) is ErrorCode.MISSING_PARAMETER
    assert refused({want_key("nope"): ids(1)}) is ErrorCode.UNKNOWN_PARAMETER
    # Ids belong to the shard their hash names.
    other = shard_tables(shard=0, num_shards=2)
    foreign = np.flatnonzero(shard_of_ids(np.arange(10), 2) == 1)[:1].astype(np.int64)
    with pytest.raises(ProtocolError) as caught:
        other.parse({want_key("emb"): foreign})
    assert caught.value.code is ErrorCode.WRONG_SHARD
    parsed = tables.parse({ids_key("emb"): ids(3, 1), rows_key("emb"): good_rows, "w": good_rows})
    assert parsed.grads["emb"][0].tolist() == [3, 1] and parsed.wants == {}


def test_checkpoint_round_trip_is_exact_and_resumes_identically() -> None:
    rng = np.random.default_rng(2)

    def steps(tables: ShardTables, versions: range) -> None:
        for version in versions:
            for rank in range(2):
                i = np.unique(rng.integers(0, 60, 20))
                tables.hold(rank, push(i, rng.standard_normal((len(i), 3))))
            tables.close_step(0.5, version)

    def fresh() -> ShardTables:
        return ShardTables(
            {"emb": TableSpec("emb", 3, NormalInit(0.1), capacity=30)},
            seed=7,
            policy=TablePolicy(admit_after=2, evict_after=6),
            shard=0,
            num_shards=1,
        )

    original = fresh()
    steps(original, range(1, 9))
    original.hold(1, push(ids(5, 8), np.ones((2, 3))))  # a step in progress
    saved = {k: a.copy() for k, a in original.state_arrays().items()}
    restored = fresh()
    restored.load_state_arrays(saved)
    again = restored.state_arrays()
    assert sorted(again) == sorted(saved)
    assert all((again[k] == saved[k]).all() for k in saved)
    assert original.tables["emb"].counts.evicted_capacity > 0  # the policies were exercised
    # Both go on from the same state (the same random pushes) and stay identical.
    state = rng.bit_generator.state
    steps(original, range(9, 14))
    rng.bit_generator.state = state
    steps(restored, range(9, 14))
    final, resumed = original.state_arrays(), restored.state_arrays()
    assert all((final[k] == resumed[k]).all() for k in final)


def test_hash_columns_are_each_columns_own_hash() -> None:
    values = np.array([0, 1, 7, 1 << 40, (1 << 63) - 1], dtype=np.int64)
    columns = hash_columns(values, 3, 11, 12)
    for c in range(3):
        assert (columns[:, c] == hash_ids(values, 11, 12, c)).all()
    assert len(np.unique(columns)) == columns.size


def test_reset_empties_every_table_back_to_the_initial_rows() -> None:
    tables = shard_tables(optimizer="sgd", lr=1.0)
    fresh = shard_tables().tables["emb"].read(ids(1, 2))
    tables.hold(0, push(ids(1, 2), np.ones((2, 3))))
    tables.close_step(1.0, 1)
    tables.hold(1, push(ids(2), np.ones((1, 3))))
    assert not (tables.tables["emb"].read(ids(1, 2)) == fresh).all()
    tables.reset()
    assert (tables.tables["emb"].read(ids(1, 2)) == fresh).all()
    assert tables.tables["emb"].rows == 0 and tables.held == {}
    # The counters are of the version too: back to zero, as a restore takes them back.
    assert tables.tables["emb"].counts.admitted == 0

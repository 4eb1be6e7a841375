"""Sparse tables on one shard: rows pulled and pushed per second, bytes per step against the
dense table, and memory per row against the row's own bytes.

A table of ``--rows`` rows (dim ``--dim``, Adagrad) is filled first; then for each batch size a
batch of distinct ids drawn Zipf(1.1) from the table's ids is

- pulled: the want ids checked as a shard checks them, the rows read, the reply framed;
- pushed: the push frame decoded and checked, the row gradients applied (Adagrad);

each against a baseline measured in the same run: the same rows gathered from, and updated in,
a plain dense NumPy array (``dense[ids]``; ``dense[ids] -= lr * g``), the floor of any table.
Bytes per step: a push (ids, row gradients, next batch's ids) plus its reply (rows), against
sending the dense table both ways. Memory: what the table's arrays hold (tracemalloc: NumPy
reports its allocations to it), per row, against the row's own ``4 * dim`` bytes.

    python -m bench.sparse                          # 1e6 rows of 16; batches 1e3, 1e4, 1e5
    python -m bench.sparse --rows 1e5 --batches 1e3,1e4 --json sparse.json
"""

from __future__ import annotations

import argparse
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    Column,
    counts,
    format_table,
    median_rate,
    parse_count,
    time_calls,
    write_json,
)
from ps_server.sparse.policies import TablePolicy
from ps_server.sparse.tables import ShardTables
from pscluster.clicks import zipf_ranks
from pscluster.models.sparse import NormalInit, TableSpec
from pscluster.protocol import decode_frame, encode_frame
from pscluster.sparse_wire import ids_key, rows_key, want_key

LR = 0.05
CHUNK = 100_000


def build(rows: int, dim: int) -> tuple[ShardTables, float]:
    """A table of ``rows`` rows, and the bytes its arrays hold per row (tracemalloc)."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tables = ShardTables(
        {"emb": TableSpec("emb", dim, NormalInit(0.01))},
        seed=0,
        policy=TablePolicy(optimizer="adagrad", lr=LR),
        shard=0,
        num_shards=1,
    )
    table = tables.tables["emb"]
    for start in range(0, rows, CHUNK):
        ids = np.arange(start, min(rows, start + CHUNK), dtype=np.int64)
        table.apply(ids, np.zeros((len(ids), dim), np.float32), np.ones(len(ids), np.int64), 1)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return tables, held / rows


def batch_ids(rows: int, batch: int, rng: np.random.Generator) -> np.ndarray:
    """``batch`` distinct ids, Zipf(1.1) over the table's ids (popular ones first)."""
    picked: np.ndarray = np.zeros(0, dtype=np.int64)
    while len(picked) < batch:
        more = zipf_ranks(rng.random(4 * batch), rows, 1.1) - 1
        picked = np.unique(np.concatenate([picked, more]))
    return np.sort(rng.permutation(picked)[:batch])


def measure(
    tables: ShardTables, rows: int, dim: int, batch: int, min_s: float, repeats: int
) -> dict[str, Any]:
    rng = np.random.default_rng(batch)
    ids = batch_ids(rows, batch, rng)
    grads = (rng.standard_normal((batch, dim)) * 1e-3).astype(np.float32)
    table = tables.tables["emb"]
    dense = np.zeros((rows, dim), dtype=np.float32)
    push_body = encode_frame(
        {"worker": "w"}, {ids_key("emb"): ids, rows_key("emb"): grads, want_key("emb"): ids}
    )

    def pull() -> None:
        wants = tables.parse(decode_frame(encode_frame({}, {want_key("emb"): ids})).arrays)
        encode_frame({"version": 1}, tables.rows_for(wants.wants))

    def push() -> None:
        parsed = tables.parse(decode_frame(push_body).arrays)
        tables.apply_now(parsed, 1.0, 2)

    def dense_pull() -> None:
        dense[ids]

    def dense_push() -> None:
        dense[ids] -= np.float32(LR) * grads

    def rate(fn: Any) -> float:
        value, _ = median_rate(lambda: _rows_timed(fn, batch, min_s), repeats)
        return value

    reply = encode_frame({"version": 1}, {rows_key("emb"): table.read(ids)})
    dense_bytes = 2 * rows * dim * 4
    row = {
        "batch": batch,
        "pull_rows_s": rate(pull),
        "push_rows_s": rate(push),
        "dense_pull_rows_s": rate(dense_pull),
        "dense_push_rows_s": rate(dense_push),
        "step_bytes": len(push_body) + len(reply),
        "dense_step_bytes": dense_bytes,
    }
    row["pull_vs_dense"] = row["pull_rows_s"] / row["dense_pull_rows_s"]
    row["push_vs_dense"] = row["push_rows_s"] / row["dense_push_rows_s"]
    row["bytes_vs_dense"] = row["step_bytes"] / dense_bytes
    return row


def _rows_timed(fn: Any, batch: int, min_s: float) -> tuple[int, float]:
    calls, seconds = time_calls(fn, min_s=min_s)
    return calls * batch, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_count, default=1_000_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batches", type=counts, default=[1000, 10_000, 100_000])
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    tables, per_row = build(args.rows, args.dim)
    own = 4 * args.dim
    print(
        f"table: {args.rows} rows of {args.dim} float32 (Adagrad): {per_row:.1f} bytes per row "
        f"measured, {own} of them the row's own values ({per_row / own:.2f}x)"
    )
    results = [
        measure(tables, args.rows, args.dim, b, args.min_time, args.repeats) for b in args.batches
    ]
    columns = [
        Column("batch", "ids"),
        Column("pull_rows_s", "pull rows/s", "{:,.0f}"),
        Column("pull_vs_dense", "vs dense[ids]", "{:.2f}"),
        Column("push_rows_s", "push rows/s", "{:,.0f}"),
        Column("push_vs_dense", "vs dense[ids]-=", "{:.2f}"),
        Column("step_bytes", "bytes/step", "{:,}"),
        Column("dense_step_bytes", "dense bytes/step", "{:,}"),
        Column("bytes_vs_dense", "sparse/dense", "{:.5f}"),
    ]
    print(format_table(results, columns))
    write_json(
        args.json,
        "sparse",
        results,
        table_rows=args.rows,
        dim=args.dim,
        bytes_per_row=per_row,
        row_bytes=own,
    )


if __name__ == "__main__":
    main()

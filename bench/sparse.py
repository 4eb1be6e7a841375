"""Sparse tables on one shard: rows pulled and pushed per second, bytes per step against the
dense table, and memory per row against the row's own bytes.

A table of ``--rows`` rows (dim ``--dim``, Adagrad) is filled first; then for each batch size a
batch of distinct ids drawn Zipf(1.1) from the table's ids is

- pulled: the want ids checked as a shard checks them, the rows read, the reply framed;
- pushed: the push frame decoded and checked, the row gradients applied (Adagrad);

each against a baseline measured in the same run: the same rows gathered from, and updated in,
a plain dense NumPy array (``dense[ids]``; ``dense[ids] -= lr * g``), the floor of any table.
Then the same batches through a real shard's data port (``bench.sparse_port``: a helper process
holding a table of as many rows; pull, push, and a worker's step of both), against the
in-process figures, the contenders taking turns.
Bytes per step: a push (ids, row gradients, next batch's ids) plus its reply (rows), against
sending the dense table both ways. Memory: what the table's arrays hold (tracemalloc: NumPy
reports its allocations to it), per row, against the row's own ``4 * dim`` bytes.

    python -m bench.sparse                          # 1e6 rows of 16; batches 1e3, 1e4, 1e5
    python -m bench.sparse --rows 1e5 --batches 1e3,1e4 --json sparse.json
    python -m bench.sparse --dense 1e6              # a large dense part beside the table
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Column, counts, format_table, parse_count, time_calls, write_json
from bench.sparse_port import PortClient, filled_table, helper, serve
from ps_server.sparse.tables import ShardTables
from pscluster.clicks import zipf_ranks
from pscluster.client import tune_allocator
from pscluster.protocol import decode_frame, encode_frame
from pscluster.sparse_wire import ids_key, rows_key, want_key

LR = 0.05


def build(rows: int, dim: int) -> tuple[ShardTables, float]:
    """A table of ``rows`` rows, and the bytes its arrays hold per row (tracemalloc)."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tables = filled_table(rows, dim, LR)
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
    tables: ShardTables,
    port: PortClient | None,
    rows: int,
    dim: int,
    batch: int,
    min_s: float,
    repeats: int,
) -> dict[str, Any]:
    """One batch size's figures: in-process, the dense baseline and (with ``port``) through the
    shard's data port, each the median of ``repeats``, the contenders taking turns."""
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

    contenders: dict[str, Callable[[], Any]] = {
        "pull_rows_s": pull,
        "push_rows_s": push,
        "dense_pull_rows_s": dense_pull,
        "dense_push_rows_s": dense_push,
    }
    if port is not None:
        contenders["port_pull_rows_s"] = lambda: port.pull(ids)
        contenders["port_push_rows_s"] = lambda: port.push(ids, grads, None)
        contenders["port_step_rows_s"] = lambda: port.push(ids, grads, ids)
    rates: dict[str, list[float]] = {key: [] for key in contenders}
    for _ in range(repeats):
        for key, fn in contenders.items():
            calls, seconds = time_calls(fn, min_s=min_s)
            rates[key].append(calls * batch / seconds)
    reply = encode_frame({"version": 1}, {rows_key("emb"): table.read(ids)})
    dense_bytes = 2 * rows * dim * 4
    row: dict[str, Any] = {key: statistics.median(r) for key, r in rates.items()}
    row.update(batch=batch, step_bytes=len(push_body) + len(reply), dense_step_bytes=dense_bytes)
    row["pull_vs_dense"] = row["pull_rows_s"] / row["dense_pull_rows_s"]
    row["push_vs_dense"] = row["push_rows_s"] / row["dense_push_rows_s"]
    row["bytes_vs_dense"] = row["step_bytes"] / dense_bytes
    if port is not None:
        row["port_pull_vs_inproc"] = row["port_pull_rows_s"] / row["pull_rows_s"]
        row["port_push_vs_inproc"] = row["port_push_rows_s"] / row["push_rows_s"]
        # A step's pull and push in process, one after the other, against the port's step.
        inproc_step = 1 / (1 / row["pull_rows_s"] + 1 / row["push_rows_s"])
        row["port_step_vs_inproc"] = row["port_step_rows_s"] / inproc_step
    return row


IN_PROCESS = [
    Column("batch", "ids"),
    Column("pull_rows_s", "pull rows/s", "{:,.0f}"),
    Column("pull_vs_dense", "vs dense[ids]", "{:.2f}"),
    Column("push_rows_s", "push rows/s", "{:,.0f}"),
    Column("push_vs_dense", "vs dense[ids]-=", "{:.2f}"),
    Column("step_bytes", "bytes/step", "{:,}"),
    Column("dense_step_bytes", "dense bytes/step", "{:,}"),
    Column("bytes_vs_dense", "sparse/dense", "{:.5f}"),
]
OVER_THE_PORT = [
    Column("batch", "ids"),
    Column("port_pull_rows_s", "pull rows/s", "{:,.0f}"),
    Column("port_pull_vs_inproc", "vs in-process", "{:.2f}"),
    Column("port_push_rows_s", "push rows/s", "{:,.0f}"),
    Column("port_push_vs_inproc", "vs in-process", "{:.2f}"),
    Column("port_step_rows_s", "step rows/s", "{:,.0f}"),
    Column("port_step_vs_inproc", "vs pull+push in-process", "{:.2f}"),
]


def main(argv: list[str] | None = None) -> None:
    tune_allocator()  # as every service does at start, the helper shard too
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="(internal) the shard, as a helper process")
    for p in (parser, serve_parser):
        p.add_argument("--rows", type=parse_count, default=1_000_000)
        p.add_argument("--dim", type=int, default=16)
        p.add_argument("--dense", type=parse_count, default=1, help="dense float32 parameters")
        p.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--batches", type=counts, default=[1000, 10_000, 100_000])
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-port", action="store_true", help="in-process figures only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.rows, args.dim, args.dense, args.lr)
        return
    tables, per_row = build(args.rows, args.dim)
    own = 4 * args.dim
    print(
        f"table: {args.rows} rows of {args.dim} float32 (Adagrad): {per_row:.1f} bytes per row "
        f"measured, {own} of them the row's own values ({per_row / own:.2f}x)"
    )
    with contextlib.ExitStack() as stack:
        port = None
        if not args.no_port:
            shard = stack.enter_context(helper(args.rows, args.dim, args.dense, args.lr))
            port = PortClient(shard.address, args.dense)
            stack.callback(port.close)
        results = [
            measure(tables, port, args.rows, args.dim, b, args.min_time, args.repeats)
            for b in args.batches
        ]
    print(f"\nin process (median of {args.repeats}):")
    print(format_table(results, IN_PROCESS))
    if port is not None:
        print(
            f"\nthrough a shard's data port on 127.0.0.1 (sync, one worker, {args.dense} dense "
            f"float32 beside the table; median of {args.repeats}, taking turns with the above):"
        )
        print(format_table(results, OVER_THE_PORT))
    write_json(
        args.json,
        "sparse",
        results,
        table_rows=args.rows,
        dim=args.dim,
        dense=args.dense,
        bytes_per_row=per_row,
        row_bytes=own,
    )


if __name__ == "__main__":
    main()

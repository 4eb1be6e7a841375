"""A shard's sync step against the machine's memory bandwidth.

One sync step: N pushes of P float32 gradients, each validated (shape, dtype, all finite) and
summed into the running sum, then the average applied by the optimizer (sgd, momentum, adam).
``ShardState`` is driven directly, as the HTTP handler drives it (the gradients are the shard's
to keep, as a request body's are), so this measures the array math alone, without the network.

The yardstick is NumPy's own copy bandwidth, measured in the same run on arrays of the same
size (``np.copyto``: P floats read and P written), going round as many arrays as the step
touches (N + 4), so that neither figure comes from a warm cache the other cannot have. The
bytes counted for a step are the ones any implementation must move: each push's gradient read
once, the running sum read and written by every push but the first (which becomes the sum), and
the update reading the parameters, the sum and the optimizer state and writing the parameters
and the state (sgd 12P bytes, momentum 20P, adam 28P). ``vs copy`` is that effective bandwidth
over the copy's.

A shard splits the passes of a step across cores (``ps_server.kernels``), while ``np.copyto``
runs on one. So the table also gives the copy split the same way across cores (``all-core
copy``: the machine's bandwidth, as far as these threads can draw on it) and the step against
that (``vs all-core``).

    python -m bench.aggregate                           # P = 1e5, 1e6, 1e7; N = 1, 4, 8, 16
    python -m bench.aggregate --params 1e7 --workers 8 --json aggregate.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from prometheus_client import CollectorRegistry

from bench.common import Column, counts, format_table, write_json
from ps_server.kernels import for_each_block
from ps_server.metrics import ShardMetrics
from ps_server.state import ShardState
from pscluster.messages import Push
from pscluster.settings import JobConfig

OPTIMIZERS = ("sgd", "momentum", "adam")
# Bytes the update must read and write, per parameter: sgd reads p and the sum and writes p;
# momentum also reads and writes the velocity; adam both moments.
UPDATE_BYTES = {"sgd": 12, "momentum": 20, "adam": 28}


def step_bytes(params: int, workers: int, optimizer: str) -> int:
    pushes = workers * 4 * params + (workers - 1) * 8 * params
    return pushes + UPDATE_BYTES[optimizer] * params


class CopyRing:
    """``np.copyto`` round a ring of arrays of P floats (a -> b -> c ... -> a), as many as a sync
    step touches, so that neither the copy nor the step runs from a cache the other lacks."""

    def __init__(self, params: int, arrays: int) -> None:
        self.ring = [np.full(params, 1.0, dtype=np.float32) for _ in range(max(2, arrays))]
        self.calls = 0

    def bandwidth(self, min_s: float, *, all_cores: bool = False) -> float:
        """Bytes read + written per second over a batch of about ``min_s``; ``all_cores``: each
        copy split across cores as a shard splits its passes."""
        calls, started = 0, time.perf_counter()
        while True:
            n = len(self.ring)
            source, target = self.ring[self.calls % n], self.ring[(self.calls + 1) % n]
            if all_cores:

                def copy_block(
                    _: str, span: slice, t: np.ndarray = target, s: np.ndarray = source
                ) -> None:
                    np.copyto(t[span], s[span])

                for_each_block({"x": source.size}, copy_block, blocked=False)
            else:
                np.copyto(target, source)
            self.calls += 1
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_s and calls >= n:
                return calls * 2 * self.ring[0].nbytes / elapsed


async def measure(
    params: int, workers: int, optimizer: str, repeats: int, min_s: float, ring: CopyRing
) -> tuple[list[float], list[float], list[float]]:
    """Seconds per sync step and the copy bandwidths (one core, all cores), ``repeats`` times
    each, taking turns (copy batches, then a batch of steps), so a noisy neighbour weighs on all
    of them alike."""
    job = JobConfig(
        shards=1,
        workers=workers,
        spares=0,
        mode="sync",
        optimizer=optimizer,
        lr=1e-3,
        steps=10**9,
        checkpoint_every=0,
    )
    metrics = ShardMetrics(CollectorRegistry())
    state = ShardState(job, 0, {"w": np.zeros(params, np.float32)}, metrics)
    template = np.full(params, 1e-3, dtype=np.float32)
    grads = [np.empty_like(template) for _ in range(workers)]

    async def step() -> float:
        for g in grads:  # fresh "request bodies" (not timed): the first becomes the sum
            np.copyto(g, template)
        started = time.perf_counter()
        version = state.version
        for rank, g in enumerate(grads):
            valid = state.validate_gradients({"w": g}, owned=True)
            verdict = await state.push(
                Push(worker=f"w{rank}", rank=rank, base_version=version, grads=valid)
            )
            assert verdict.accepted, verdict
        assert state.version == version + 1
        return time.perf_counter() - started

    await step()  # warm-up: faults in the optimizer state
    per_step, copy_rates, all_core_rates = [], [], []
    for _ in range(repeats):
        copy_rates.append(ring.bandwidth(min_s / 4))
        all_core_rates.append(ring.bandwidth(min_s / 4, all_cores=True))
        spent, count = 0.0, 0
        while spent < min_s or count < 2:
            spent += await step()
            count += 1
        per_step.append(spent / count)
    return per_step, copy_rates, all_core_rates


def bench(
    params_list: Sequence[int],
    workers_list: Sequence[int],
    optimizers: Sequence[str],
    repeats: int,
    min_s: float,
) -> list[dict[str, Any]]:
    rows = []
    for params in params_list:
        for workers in workers_list:
            # The step touches N gradients, the sum, the parameters and up to two state arrays.
            ring = CopyRing(params, workers + 4)
            for optimizer in optimizers:
                seconds, copies, all_core = uvloop.run(
                    measure(params, workers, optimizer, repeats, min_s, ring)
                )
                step_s, copy_bps = statistics.median(seconds), statistics.median(copies)
                all_core_bps = statistics.median(all_core)
                counted = step_bytes(params, workers, optimizer)
                row = {
                    "params": params,
                    "workers": workers,
                    "optimizer": optimizer,
                    "step_ms": step_s * 1e3,
                    "steps_per_s": 1 / step_s,
                    "bytes_per_step": counted,
                    "gb_per_s": counted / step_s / 1e9,
                    "copy_gb_per_s": copy_bps / 1e9,
                    "vs_copy": counted / step_s / copy_bps,
                    "all_core_copy_gb_per_s": all_core_bps / 1e9,
                    "vs_all_core_copy": counted / step_s / all_core_bps,
                    "repeats_ms": [s * 1e3 for s in seconds],
                    "copy_repeats_gb_per_s": [c / 1e9 for c in copies],
                    "all_core_copy_repeats_gb_per_s": [c / 1e9 for c in all_core],
                }
                rows.append(row)
                print(format_table([row], COLUMNS).splitlines()[-1], flush=True)
            del ring
    return rows


COLUMNS = [
    Column("params", "P", "{:.0e}"),
    Column("workers", "N"),
    Column("optimizer", "optimizer"),
    Column("step_ms", "step ms", "{:.2f}"),
    Column("steps_per_s", "steps/s", "{:.1f}"),
    Column("gb_per_s", "GB/s", "{:.2f}"),
    Column("copy_gb_per_s", "copy GB/s", "{:.2f}"),
    Column("vs_copy", "vs copy", "{:.2f}"),
    Column("all_core_copy_gb_per_s", "all-core copy GB/s", "{:.2f}"),
    Column("vs_all_core_copy", "vs all-core", "{:.2f}"),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.aggregate", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--params", type=counts, default="1e5,1e6,1e7", help="P values")
    parser.add_argument("--workers", type=counts, default="1,4,8,16", help="N values")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="which optimizers")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per figure")
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timed batch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    optimizers = [o for o in args.optimizers.split(",") if o]
    if set(optimizers) - set(OPTIMIZERS):
        parser.error(f"optimizers are {', '.join(OPTIMIZERS)}")
    print(format_table([], COLUMNS), flush=True)
    rows = bench(args.params, args.workers, optimizers, args.repeats, args.min_time)
    print(f"\nsync step, median of {args.repeats}; GB/s counts the bytes a step must move")
    print(format_table(rows, COLUMNS))
    write_json(args.json, "aggregate", rows, repeats=args.repeats, min_time_s=args.min_time)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

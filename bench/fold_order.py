"""What folding a sync step in rank order costs when gradients arrive out of order.

A shard folds a step's gradients in ascending rank order (``ps_server.fold_order``), so a
gradient that arrives before a lower rank's is held until that one is in. This drives
``ShardState`` directly, as the HTTP handler does (each push a fresh body that the shard may
keep), with N = 4 pushes per step arriving in rank order and in reverse rank order (the worst
case: three held), and reports the step time and the peak memory that the step's bodies and
sums take (tracemalloc: NumPy reports its allocations to it), the ratio reverse / in order.

    python -m bench.fold_order                       # P = 1e5, 1e6, 1e7
    python -m bench.fold_order --params 1e6 --json fold.json
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from prometheus_client import CollectorRegistry

from bench.common import Column, counts, format_table, write_json
from ps_server.metrics import ShardMetrics
from ps_server.state import ShardState
from pscluster.messages import Push
from pscluster.settings import JobConfig

WORKERS = 4


async def measure(params: int, order: list[int], repeats: int) -> tuple[float, float]:
    """Median seconds per step and peak MB held over a step, for one arrival order."""
    job = JobConfig(shards=1, workers=WORKERS, optimizer="momentum", lr=1e-3, steps=10**9)
    state = ShardState(
        job, 0, {"w": np.zeros(params, np.float32)}, ShardMetrics(CollectorRegistry())
    )
    await state.set_members({f"w{r}": r for r in range(WORKERS)})
    template = np.full(params, 1e-3, dtype=np.float32)
    times, peaks = [], []
    for repeat in range(repeats + 1):
        tracemalloc.start()
        tracemalloc.reset_peak()
        started, version = time.perf_counter(), state.version
        for rank in order:
            body = template.copy()  # a request's own body, as the handler hands it over
            valid = state.validate_gradients({"w": body}, owned=True)
            del body
            verdict = await state.push(
                Push(worker=f"w{rank}", rank=rank, base_version=version, grads=valid)
            )
            assert verdict.accepted, verdict
            del valid
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert state.version == version + 1
        if repeat:  # the first step faults in the optimizer state
            times.append(elapsed)
            peaks.append(peak / 1e6)
    return statistics.median(times), max(peaks)


async def bench(params_list: list[int], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for params in params_list:
        in_order = await measure(params, list(range(WORKERS)), repeats)
        reverse = await measure(params, list(reversed(range(WORKERS))), repeats)
        rows.append(
            {
                "params": params,
                "in_order_ms": in_order[0] * 1e3,
                "reverse_ms": reverse[0] * 1e3,
                "time_ratio": reverse[0] / in_order[0],
                "in_order_mb": in_order[1],
                "reverse_mb": reverse[1],
                "memory_ratio": reverse[1] / in_order[1],
            }
        )
    return rows


COLUMNS = [
    Column("params", "P"),
    Column("in_order_ms", "in order ms", "{:.2f}"),
    Column("reverse_ms", "reverse ms", "{:.2f}"),
    Column("time_ratio", "time rev/in", "{:.2f}"),
    Column("in_order_mb", "in order MB", "{:.1f}"),
    Column("reverse_mb", "reverse MB", "{:.1f}"),
    Column("memory_ratio", "memory rev/in", "{:.2f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=counts, default=counts("1e5,1e6,1e7"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = uvloop.run(bench(args.params, args.repeats))
    print(format_table(rows, COLUMNS))
    write_json(args.json, "fold_order", rows, workers=WORKERS)


if __name__ == "__main__":
    main()

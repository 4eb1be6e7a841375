"""Step time with N of N + k = 8 workers, measured against Chen et al. 2016's order statistics.

    python -m bench.stragglers --order-statistics --repeats 3

For each N (8, 6, 4; k = 8 - N spares) two real clusters run: one without delays, whose step
time is the fixed per-step cost c (reply, compute, push, the shard's gather and update), and one
with ``--delay exponential`` (every worker's delay s + Exp(mean s)). Predicted: c + E[X(N:8)]
(``bench.order_stats``), where every worker starts each step together; and the same with late
starts simulated, since a dropped worker starts its next step only when its late push returns.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import Column, format_table, pscluster_up, write_json
from bench.order_stats import predicted_step_seconds, simulate_step_seconds

WORLD = 8

COLUMNS = [
    Column("aggregate", "N"),
    Column("spares", "k"),
    Column("fixed_ms", "fixed ms/step", "{:.1f}"),
    Column("measured_ms", "measured ms/step", "{:.1f}"),
    Column("measured_range", "range"),
    Column("predicted_ms", "Chen et al.", "{:.1f}"),
    Column("late_start_ms", "with late starts", "{:.1f}"),
    Column("ratio", "measured / Chen", "{:.2f}"),
]


def _step_ms(
    args: argparse.Namespace, aggregate: int, delay: list[str], work: Path, name: str
) -> float:
    flags = [
        *("--shards", str(args.shards), "--workers", str(aggregate)),
        *("--spares", str(WORLD - aggregate), "--mode", "sync", "--steps", str(args.steps)),
        *("--optimizer", "sgd", "--lr", str(args.lr * aggregate), "--seed", str(args.seed)),
        *("--eval-every", "1000", "--backend", "numpy", "--timeout", str(args.timeout)),
        *delay,
    ]
    summary = pscluster_up(flags, work / name, timeout_s=args.timeout + 60)
    return float(summary["step_seconds"]) * 1000


def run_theory(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    delay = ["--delay", "exponential", "--delay-s", str(args.delay_s)]
    with tempfile.TemporaryDirectory(prefix="bench-order-stats-") as tmp:
        for aggregate in (8, 6, 4):
            fixed, measured = [], []
            for repeat in range(args.repeats):
                work = Path(tmp) / f"{aggregate}-{repeat}"
                fixed.append(_step_ms(args, aggregate, ["--delay", "none"], work, "fixed"))
                measured.append(_step_ms(args, aggregate, delay, work, "delayed"))
            c = statistics.median(fixed) / 1000
            predicted = predicted_step_seconds(WORLD, aggregate, args.delay_s, c) * 1000
            late = simulate_step_seconds(WORLD, aggregate, args.delay_s, c) * 1000
            m = statistics.median(measured)
            rows.append(
                {
                    "aggregate": aggregate,
                    "spares": WORLD - aggregate,
                    "fixed_ms": c * 1000,
                    "fixed_runs_ms": fixed,
                    "measured_ms": m,
                    "measured_runs_ms": measured,
                    "measured_range": f"{min(measured):.1f}-{max(measured):.1f}",
                    "predicted_ms": predicted,
                    "late_start_ms": late,
                    "ratio": m / predicted,
                }
            )
    print(
        f"N of N + k = {WORLD}, --delay exponential --delay-s {args.delay_s} "
        f"(s + Exp(mean s)), {args.steps} sync steps, {args.shards} shards, "
        f"median of {args.repeats}"
    )
    print(format_table(rows, COLUMNS))
    write_json(args.json, "stragglers-order-statistics", rows)
    return 0

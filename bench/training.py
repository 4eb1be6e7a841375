"""Training throughput of the default MLP job with 1, 2 and 4 workers, and where the time goes.

Each run is ``pscluster up`` (coordinator, shards and workers as local processes, sync mode,
k = 0) on the default job: an MLP on digits. Samples per second count every worker's batches
over the coordinator's training time; the split of a step into pull, compute, push and wait is
the workers' own measurement (the summary's ``workers[*].phase_seconds``, averaged over the
workers). A second table runs the same job with each wire dtype: the accuracy cost of sending
gradients and parameters in 16 bits.

    python -m bench.training                          # workers 1, 2, 4; float32, float16, bfloat16
    python -m bench.training --workers 4 --wire-dtypes float32 --json training.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import Column, counts, format_table, pscluster_up, write_json

PHASES = ("pull", "compute", "push", "wait")


def run_job(workers: int, wire_dtype: str, extra: Sequence[str]) -> dict[str, Any]:
    """One ``pscluster up`` run; its summary."""
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        flags = [
            *("--model", "mlp", "--dataset", "digits", "--mode", "sync"),
            *("--workers", str(workers), "--spares", "0", "--wire-dtype", wire_dtype),
            *extra,
        ]
        return pscluster_up(flags, Path(tmp) / "run")


def row_of(workers: int, wire_dtype: str, summary: dict[str, Any]) -> dict[str, Any]:
    job = summary["job"]
    ran = [w for w in summary["workers"] if w.get("steps")]
    samples = sum(w["steps"] for w in ran) * job["batch_size"]
    seconds = summary["seconds"]
    row: dict[str, Any] = {
        "workers": workers,
        "wire_dtype": wire_dtype,
        "steps": summary["steps"],
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds else None,
        "step_ms": statistics.mean(w["step_seconds"] for w in ran) * 1e3,
        "accuracy": summary["accuracy"],
        "loss": summary["loss"],
    }
    for phase in PHASES:
        row[f"{phase}_ms"] = statistics.mean(w["phase_seconds"][phase] for w in ran) * 1e3
    return row


THROUGHPUT = [
    Column("workers", "workers"),
    Column("steps", "steps"),
    Column("seconds", "seconds", "{:.2f}"),
    Column("samples_per_s", "samples/s", "{:.0f}"),
    Column("step_ms", "step ms", "{:.2f}"),
    *(Column(f"{phase}_ms", f"{phase} ms", "{:.2f}") for phase in PHASES),
    Column("accuracy", "accuracy", "{:.4f}"),
]
PRECISION = [
    Column("wire_dtype", "wire dtype"),
    Column("workers", "workers"),
    Column("accuracy", "accuracy", "{:.4f}"),
    Column("loss", "loss", "{:.4f}"),
    Column("samples_per_s", "samples/s", "{:.0f}"),
    Column("push_ms", "push ms", "{:.2f}"),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.training", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--workers", type=counts, default="1,2,4", help="worker counts")
    parser.add_argument(
        "--wire-dtypes", default="float32,float16,bfloat16", help="wire dtypes to compare"
    )
    parser.add_argument("--steps", type=int, help="override the job's step count")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    extra = ["--steps", str(args.steps)] if args.steps else []
    dtypes = [d for d in args.wire_dtypes.split(",") if d]

    print(format_table([], THROUGHPUT), flush=True)
    throughput = []
    for workers in args.workers:
        row = row_of(workers, "float32", run_job(workers, "float32", extra))
        throughput.append(row)
        print(format_table([row], THROUGHPUT).splitlines()[-1], flush=True)
    print("\nthroughput of the default MLP job (sync, k = 0); per-step phases, workers' mean")
    print(format_table(throughput, THROUGHPUT))

    precision = []
    most = max(args.workers)
    for dtype in dtypes:
        known = [r for r in throughput if r["workers"] == most and dtype == "float32"]
        precision.append(known[0] if known else row_of(most, dtype, run_job(most, dtype, extra)))
    if precision:
        print(f"\nwire dtype: accuracy cost on digits ({most} workers)")
        print(format_table(precision, PRECISION))
    write_json(args.json, "training", throughput, precision=precision)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training throughput of the default job with 1, 2 and 4 workers, and where the time goes.

Each run is ``pscluster up`` (coordinator, shards and workers as local processes, sync mode,
k = 0) on digits. The NumPy MLP (the default job) always runs; ``--model`` adds another model
beside it, in the same run and at the same worker counts (``torch_cnn``: the PyTorch CNN), with
its samples per second as a ratio of the MLP's. Samples per second count every worker's batches
over the coordinator's training time, and (``samples/s (steps)``) from the workers' own step
times: the sum over workers of batch / mean step time, which leaves out start-up and the final
evaluation; the split of a step into pull, compute, push and wait is
the workers' own measurement (the summary's ``workers[*].phase_seconds``, averaged over the
workers). A second table runs the same job with each wire dtype: the accuracy cost of sending
gradients and parameters in 16 bits.

    python -m bench.training                          # workers 1, 2, 4; float32, float16, bfloat16
    python -m bench.training --model torch_cnn --wire-dtypes float32
    python -m bench.training --workers 4 --wire-dtypes float32 --json training.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Column, counts, format_table, pscluster_up, time_calls, write_json
from pscluster.datasets import load_dataset
from pscluster.models import build_model

PHASES = ("pull", "compute", "push", "wait")
BASELINE = "mlp"


def run_job(model: str, workers: int, wire_dtype: str, extra: Sequence[str]) -> dict[str, Any]:
    """One ``pscluster up`` run; its summary."""
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        flags = [
            *("--model", model, "--dataset", "digits", "--mode", "sync"),
            *("--workers", str(workers), "--spares", "0", "--wire-dtype", wire_dtype),
            *extra,
        ]
        return pscluster_up(flags, Path(tmp) / "run")


def row_of(model: str, workers: int, wire_dtype: str, summary: dict[str, Any]) -> dict[str, Any]:
    job = summary["job"]
    ran = [w for w in summary["workers"] if w.get("steps")]
    samples = sum(w["steps"] for w in ran) * job["batch_size"]
    seconds = summary["seconds"]
    row: dict[str, Any] = {
        "model": model,
        "workers": workers,
        "wire_dtype": wire_dtype,
        "steps": summary["steps"],
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds else None,
        # From the workers' own step times: start-up and the final evaluation left out.
        "step_samples_per_s": sum(job["batch_size"] / w["step_seconds"] for w in ran),
        "step_ms": statistics.mean(w["step_seconds"] for w in ran) * 1e3,
        "accuracy": summary["accuracy"],
        "loss": summary["loss"],
    }
    for phase in PHASES:
        row[f"{phase}_ms"] = statistics.mean(w["phase_seconds"][phase] for w in ran) * 1e3
    return row


def compute_alone(model_spec: str, batch_size: int = 32, min_s: float = 1.0) -> dict[str, Any]:
    """One process, one thread, nothing else running: the time of one batch's loss and
    gradients, the part of a step the model owns (``compute ms`` in a cluster adds the
    contention for cores with the other processes)."""
    data = load_dataset("digits", 0)
    model = build_model(model_spec, data.n_features, data.n_classes, (64,), torch_threads=1)
    params = model.init_parameters(0)
    rows = np.arange(batch_size)
    x, y = data.x_train[rows], data.y_train[rows]
    calls, seconds = time_calls(lambda: model.loss_and_gradients(params, x, y), min_s=min_s)
    return {
        "model": model_spec,
        "parameters": sum(p.size for p in params.values()),
        "batch": batch_size,
        "ms_per_batch": seconds / calls * 1e3,
    }


ALONE = [
    Column("model", "model"),
    Column("parameters", "parameters"),
    Column("batch", "batch"),
    Column("ms_per_batch", "loss + gradients ms", "{:.2f}"),
]
THROUGHPUT = [
    Column("model", "model"),
    Column("workers", "workers"),
    Column("steps", "steps"),
    Column("seconds", "seconds", "{:.2f}"),
    Column("samples_per_s", "samples/s", "{:.0f}"),
    Column("step_samples_per_s", "samples/s (steps)", "{:.0f}"),
    Column("vs_baseline", f"vs {BASELINE}", "{:.2f}"),
    Column("step_ms", "step ms", "{:.2f}"),
    *(Column(f"{phase}_ms", f"{phase} ms", "{:.2f}") for phase in PHASES),
    Column("accuracy", "accuracy", "{:.4f}"),
]
PRECISION = [
    Column("model", "model"),
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
        "--model",
        default=BASELINE,
        help=f"a model to run beside the NumPy {BASELINE} (torch_cnn, or package.module:factory)",
    )
    parser.add_argument(
        "--wire-dtypes", default="float32,float16,bfloat16", help="wire dtypes to compare"
    )
    parser.add_argument("--steps", type=int, help="override the job's step count")
    parser.add_argument(
        "--alone-s", type=float, default=1.0, help="seconds to time one batch's compute alone"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    extra = ["--steps", str(args.steps)] if args.steps else []
    dtypes = [d for d in args.wire_dtypes.split(",") if d]
    models = list(dict.fromkeys([BASELINE, args.model]))

    print(format_table([], THROUGHPUT), flush=True)
    throughput: list[dict[str, Any]] = []
    for workers in args.workers:
        # Interleaved: each model's run at this worker count next to the baseline's.
        for model in models:
            row = row_of(model, workers, "float32", run_job(model, workers, "float32", extra))
            baseline = throughput[-1] if model != BASELINE else row
            if row["samples_per_s"] and baseline["samples_per_s"]:
                row["vs_baseline"] = row["samples_per_s"] / baseline["samples_per_s"]
            throughput.append(row)
            print(format_table([row], THROUGHPUT).splitlines()[-1], flush=True)
    print("\nthroughput on digits (sync, k = 0); per-step phases, workers' mean")
    print(format_table(throughput, THROUGHPUT))

    alone = [compute_alone(model, min_s=args.alone_s) for model in models]
    print("\none batch's loss and gradients in one process, one thread")
    print(format_table(alone, ALONE))

    precision = []
    most = max(args.workers)
    model = models[-1]
    for dtype in dtypes:
        known = [
            r
            for r in throughput
            if r["workers"] == most and r["model"] == model and dtype == "float32"
        ]
        precision.append(
            known[0] if known else row_of(model, most, dtype, run_job(model, most, dtype, extra))
        )
    if precision:
        print(f"\nwire dtype: accuracy cost on digits ({model}, {most} workers)")
        print(format_table(precision, PRECISION))
    write_json(args.json, "training", throughput, precision=precision, alone=alone)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

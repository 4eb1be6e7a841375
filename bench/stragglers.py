"""Stragglers: sync with 0, 1, 2 and 4 spares and with an adaptive deadline, against async (plain,
dropping, 1/staleness) and bounded staleness (ssp, S = 1, 2, 4).

Every configuration trains the same model on the digits set with a real local cluster, one
``pscluster up`` subprocess each (coordinator, shards and workers as processes on loopback), under
one straggler pattern. It prints a table (time per step, time to a target held-out loss, final
accuracy, gradients dropped) and plots held-out loss against wall time, one line per configuration.

    python -m bench.stragglers --pattern one-slow --png docs/stragglers-one-slow.png

Fair budgets: a sync step averages N gradients, an async step applies one, so async runs N times
as many steps as sync and every configuration processes the same number of training examples; and
sync uses N times the learning rate (the linear scaling rule, Goyal et al. 2017), so that one sync
step moves the model about as far as N async steps (``--no-linear-scaling`` turns that off).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Column, format_table, pscluster_up, write_json

# Straggler patterns, as ``pscluster up`` flags (the base delay comes from --delay-s).
PATTERNS: dict[str, list[str]] = {
    # One worker five times slower than the rest, on every step.
    "one-slow": ["--delay", "fixed", "--slow-workers", "1", "--slow-factor", "5"],
    # Every worker's step is delayed by a shifted exponential: never faster, mean twice the base.
    "exponential": ["--delay", "exponential"],
    # Every worker is usually at the base delay, one step in twenty 20 times slower.
    "long-tail": ["--delay", "long_tail"],
}


@dataclass(frozen=True)
class Config:
    name: str
    flags: tuple[str, ...]


def configurations(args: argparse.Namespace) -> list[Config]:
    sync = ("--mode", "sync", "--steps", str(args.steps), "--lr", str(sync_lr(args)))
    async_steps = args.steps * args.workers
    asynchronous = ("--mode", "async", "--steps", str(async_steps), "--lr", str(args.lr))
    ssp = ("--mode", "ssp", "--steps", str(async_steps), "--lr", str(args.lr))
    return [
        *(Config(f"sync, {k} spares", (*sync, "--spares", str(k))) for k in args.spares),
        Config("async", asynchronous),
        Config(
            f"async, drop staleness > {args.max_staleness}",
            (*asynchronous, "--max-staleness", str(args.max_staleness)),
        ),
        Config("async, lr / staleness", (*asynchronous, "--staleness-policy", "inverse")),
        # No k to choose: N workers, the step closes at a deadline learnt from arrivals.
        Config("sync, deadline auto", (*sync, "--spares", "0", "--deadline", "auto")),
        # The deadline on the workers of a spares row: the same cluster, compared one to one.
        *(
            Config(deadline_with_spares(k), (*sync, "--spares", str(k), "--deadline", "auto"))
            for k in args.deadline_spares
        ),
        *(
            Config(f"ssp, S = {bound}", (*ssp, "--ssp-bound", str(bound)))
            for bound in args.ssp_bounds
        ),
    ]


def deadline_with_spares(spares: int) -> str:
    return f"sync, {spares} spares + deadline auto"


def same_workers(name: str) -> str | None:
    """The spares row that runs as many workers as a deadline row."""
    if name == "sync, deadline auto":
        return BASELINE
    match = re.fullmatch(r"sync, (\d+) spares \+ deadline auto", name)
    return f"sync, {match.group(1)} spares" if match else None


def sync_lr(args: argparse.Namespace) -> float:
    lr: float = args.lr * args.workers if args.linear_scaling else args.lr
    return lr


def common_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--shards", str(args.shards),
        "--workers", str(args.workers),
        "--model", "mlp",
        "--dataset", "digits",
        "--seed", str(args.seed),
        "--optimizer", args.optimizer,
        "--eval-every", str(args.eval_every),
        # The coordinator evaluates at most once per poll: poll often, so the curves have points.
        "--poll-interval-s", "0.05",
        "--backend", "numpy",
        "--delay-s", str(args.delay_s),
        *PATTERNS[args.pattern],
    ]  # fmt: skip


def run_config(config: Config, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One ``pscluster up``; returns its summary JSON (or raises with the launcher's output)."""
    slug = "".join(c if c.isalnum() else "-" for c in config.name).strip("-")
    flags = ["--timeout", str(args.timeout), *common_flags(args), *config.flags]
    return pscluster_up(flags, work / slug, timeout_s=args.timeout + 60)


def time_to_loss(history: list[dict[str, float]], target: float) -> float | None:
    """Wall seconds at the first evaluation whose held-out loss is at or below ``target``."""
    for point in history:
        if point["loss"] <= target:
            return float(point["seconds"])
    return None


def row_of(config: Config, summary: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    gradients = summary.get("gradients", {})
    # Pushes refused after the job's last step ("done") are not lost work: leave them out.
    dropped = {
        reason: count
        for reason, count in gradients.get("dropped", {}).items()
        if count and reason != "done"
    }
    seconds = float(summary["seconds"])
    applied = gradients.get("applied", 0) / args.shards  # every gradient is pushed to each shard
    history = summary.get("history", [])
    loss = summary.get("loss")
    return {
        "config": config.name,
        "steps": summary["steps"],
        "step_ms": None if summary["step_seconds"] is None else summary["step_seconds"] * 1000,
        "gradients_per_s": applied / seconds if seconds > 0 else None,
        "seconds": seconds,
        "to_target_s": time_to_loss(history, args.target_loss),
        "loss": loss if loss is None or math.isfinite(loss) else None,
        "accuracy": summary.get("accuracy"),
        # Per shard, like "applied": the gradients a shard refused.
        "dropped": sum(dropped.values()) / args.shards,
        "dropped_reasons": ", ".join(sorted(dropped)) or "-",
        # sync: what the deadline did (mean over shards); ssp: the largest clock gap
        "deadline_ms": None
        if summary.get("deadline_seconds") is None
        else summary["deadline_seconds"] * 1000,
        "steps_closed_early": summary.get("steps_closed_early"),
        "gradients_per_step": summary.get("gradients_per_step"),
        "max_clock_gap": summary.get("max_clock_gap"),
        "history": history,
    }


COLUMNS = [
    Column("config", "configuration"),
    Column("step_ms", "ms/step", "{:.1f}"),
    Column("gradients_per_s", "gradients/s", "{:.0f}"),
    Column("to_target_s", "s to target", "{:.2f}"),
    Column("seconds", "s total", "{:.2f}"),
    Column("loss", "final loss", "{:.3f}"),
    Column("accuracy", "accuracy", "{:.3f}"),
    Column("dropped", "dropped", "{:.0f}"),
    Column("dropped_reasons", "why"),
    Column("deadline_ms", "deadline ms", "{:.1f}"),
    Column("gradients_per_step", "grads/step", "{:.2f}"),
    Column("step_ms_spread", "ms/step range"),
    Column("to_target_s_spread", "s to target range"),
    Column("step_vs_sync", "ms/step / 0 spares", "{:.2f}"),
    Column("step_vs_sync_spread", "range"),
    Column("target_vs_spares", "to target / best spares", "{:.2f}"),
    Column("target_vs_spares_spread", "range"),
    Column("target_vs_same", "to target / same workers' spares", "{:.2f}"),
    Column("target_vs_same_spread", "range"),
]

BASELINE = "sync, 0 spares"


def paired_ratios(
    results: dict[str, list[dict[str, Any]]], key: str, baseline: str
) -> dict[str, list[float]]:
    """Per configuration, ``key`` divided by the baseline's in the same repeat: the repeats are
    interleaved, so a ratio compares runs made within a minute of each other."""
    base = results.get(baseline, [])
    ratios: dict[str, list[float]] = {}
    for name, runs in results.items():
        pairs = zip(runs, base, strict=False)
        ratios[name] = [r[key] / b[key] for r, b in pairs if r[key] and b[key]]
    return ratios


def best_spares(results: dict[str, list[dict[str, Any]]]) -> str | None:
    """The spares setting with the lowest median time to the target loss."""
    medians = {
        name: statistics.median(times)
        for name, runs in results.items()
        if name.startswith("sync, ") and name.endswith(" spares")
        if (times := [r["to_target_s"] for r in runs if r["to_target_s"] is not None])
    }
    return min(medians, key=lambda name: medians[name]) if medians else None


def add_ratios(rows: list[dict[str, Any]], results: dict[str, list[dict[str, Any]]]) -> None:
    """ms/step against sync without spares, time to target against the best spares setting."""
    best = best_spares(results)
    wanted = [("step_vs_sync", "step_ms", BASELINE), ("target_vs_spares", "to_target_s", best)]
    for column, key, baseline in wanted:
        if baseline is None:
            continue
        ratios = paired_ratios(results, key, baseline)
        for row in rows:
            values = ratios[row["config"]]
            if values and row["config"] != baseline:
                row[column] = statistics.median(values)
                row[f"{column}_runs"] = values
                if len(values) > 1:
                    row[f"{column}_spread"] = f"{min(values):.2f}-{max(values):.2f}"
        if column == "target_vs_spares":
            for row in rows:
                row["best_spares"] = best
    # Each deadline row against the spares row with as many workers, repeat by repeat.
    for row in rows:
        baseline = same_workers(row["config"])
        if baseline is None or baseline not in results:
            continue
        values = paired_ratios(results, "to_target_s", baseline)[row["config"]]
        if values:
            row["target_vs_same"] = statistics.median(values)
            row["target_vs_same_runs"] = values
            if len(values) > 1:
                row["target_vs_same_spread"] = f"{min(values):.2f}-{max(values):.2f}"


def plot(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "matplotlib is missing: pip install -c constraints.txt -e '.[bench]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for row in rows:
        history = row["history"]
        style = "-" if row["config"].startswith("sync") else "--"
        ax.plot(
            [p["seconds"] for p in history],
            [p["loss"] for p in history],
            style,
            marker=".",
            markersize=3,
            label=row["config"],
        )
    ax.axhline(args.target_loss, color="grey", linewidth=0.8, linestyle=":", label="target loss")
    ax.set_yscale("log")
    ax.set_xlabel("wall time since training started (s)")
    ax.set_ylabel("held-out loss")
    ax.set_title(
        f"digits, MLP, N = {args.workers}, pattern {args.pattern} (base delay {args.delay_s} s)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"plot written to {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stragglers",
        description="Sync with spares against async, under a straggler pattern, on a real cluster.",
    )
    parser.add_argument("--pattern", choices=sorted(PATTERNS), default="one-slow")
    parser.add_argument("--workers", type=int, default=4, help="N: gradients per sync step.")
    parser.add_argument(
        "--spares", default="0,1,2,4", help="Spare replicas of the sync runs, comma separated."
    )
    parser.add_argument("--steps", type=int, default=200, help="Sync steps (async: N times more).")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "momentum", "adam"])
    parser.add_argument("--lr", type=float, default=0.2, help="Learning rate of async runs.")
    parser.add_argument(
        "--no-linear-scaling",
        dest="linear_scaling",
        action="store_false",
        help="Train sync runs at --lr too, instead of N times --lr.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delay-s", type=float, default=0.01, help="Base per-step delay.")
    parser.add_argument("--max-staleness", type=int, default=4, help="Bound of the dropping run.")
    parser.add_argument("--target-loss", type=float, default=0.15, help="Held-out loss to reach.")
    parser.add_argument("--eval-every", type=int, default=5, help="Steps between evaluations.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Per configuration.")
    parser.add_argument("--png", type=Path, help="Write the plot here.")
    parser.add_argument("--json", type=Path, help="Write the rows and histories here.")
    parser.add_argument("--ssp-bounds", default="1,2,4", help="S of the ssp runs.")
    parser.add_argument(
        "--deadline-spares",
        default="1,2,4",
        help="Spares of the runs that combine them with --deadline auto, comma separated.",
    )
    parser.add_argument(
        "--only", help="Run only the configurations whose name matches this regular expression."
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="Runs of each configuration (median and spread)."
    )
    parser.add_argument(
        "--order-statistics",
        action="store_true",
        help="Instead: step time with N of N + k = 8 workers against Chen et al.'s prediction.",
    )
    args = parser.parse_args(argv)
    args.spares = [int(k) for k in args.spares.split(",") if k.strip()]
    args.ssp_bounds = [int(s) for s in args.ssp_bounds.split(",") if s.strip()]
    args.deadline_spares = [int(k) for k in args.deadline_spares.split(",") if k.strip()]
    return args


def merge_repeats(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of medians, with the spread (min-max) of the times over the repeats."""
    row = dict(repeats[len(repeats) // 2])
    for key in ("step_ms", "gradients_per_s", "to_target_s", "seconds", "loss", "accuracy"):
        values = [r[key] for r in repeats if r[key] is not None]
        row[key] = statistics.median(values) if values else None
        if key in ("step_ms", "to_target_s") and len(values) > 1:
            row[f"{key}_spread"] = f"{min(values):.4g}-{max(values):.4g}"
    row["repeats"] = [{k: v for k, v in r.items() if k != "history"} for r in repeats]
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.order_statistics:
        from bench.stragglers_theory import run_theory

        return run_theory(args)
    started = time.perf_counter()
    rows = []
    configs = [c for c in configurations(args) if not args.only or re.search(args.only, c.name)]
    results: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="bench-stragglers-") as tmp:
        # Repeats interleaved (every configuration once, then again), so that a noisy minute on
        # a shared machine hits every configuration alike.
        for repeat in range(args.repeats):
            for config in configs:
                t0 = time.perf_counter()
                summary = run_config(config, args, Path(tmp) / str(repeat))
                results[config.name].append(row_of(config, summary, args))
                print(f"  {config.name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows = [merge_repeats(results[c.name]) for c in configs]
    add_ratios(rows, results)
    print(
        f"pattern {args.pattern}, base delay {args.delay_s} s, N = {args.workers}, "
        f"{args.shards} shards, {args.optimizer}; sync: {args.steps} steps at lr "
        f"{sync_lr(args):g}, async: {args.steps * args.workers} steps at lr {args.lr:g}; "
        f"target held-out loss {args.target_loss}"
    )
    print(format_table(rows, COLUMNS))
    print(
        f"ratios per repeat (median, range): ms/step against {BASELINE!r}, seconds to target "
        f"against the best spares setting, {best_spares(results)!r}, and each deadline row "
        f"against the spares row of as many workers; {args.repeats} repeats, "
        f"interleaved ({time.perf_counter() - started:.0f} s in all)"
    )
    if args.png:
        plot(rows, args, args.png)
    write_json(
        args.json,
        "stragglers",
        rows,
        settings={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

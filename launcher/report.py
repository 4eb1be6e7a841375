"""What ``pscluster up`` shows: the coordinator's ``/status``, a progress line, the summary."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from launcher.processes import Cluster
from pscluster.faults import fired_at
from pscluster.settings.timeouts import STATUS_TIMEOUT_S


def get_status(url: str, timeout_s: float = STATUS_TIMEOUT_S) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/status", timeout=timeout_s) as resp:
        status: dict[str, Any] = json.loads(resp.read())
    return status


def summarize(status: dict[str, Any], cluster: Cluster) -> dict[str, Any]:
    workers = status.get("workers", [])

    def mean_step(selected: list[dict[str, Any]]) -> float | None:
        times = [w["step_seconds"] for w in selected if w.get("steps")]
        return sum(times) / len(times) if times else None

    steps = int(status.get("step", 0))
    seconds = float(status.get("seconds", 0.0))
    return {
        "accuracy": status.get("accuracy"),
        "loss": status.get("loss"),
        # clicks: held-out AUC and the hidden model's own (the best achievable)
        "auc": status.get("auc"),
        "oracle_auc": status.get("oracle_auc"),
        "tables": table_summary(status.get("shards", [])),
        "steps": steps,
        "seconds": round(seconds, 3),
        "step_seconds": seconds / steps if steps else None,
        "fast_worker_step_seconds": mean_step(
            [w for w in workers if w.get("delay_factor", 1) <= 1]
        ),
        "slow_worker_step_seconds": mean_step([w for w in workers if w.get("delay_factor", 1) > 1]),
        "mode": status.get("mode"),
        "aggregate": status.get("aggregate"),
        "spares": status.get("spares"),
        "gradients": status.get("gradients", {}),
        "endpoints": {
            "coordinator": cluster.coordinator.url if cluster.coordinator else None,
            "shards": [s.url for s in cluster.shards],
            "workers": [w.url for w in cluster.workers],
        },
        "workers": workers,
        "history": status.get("history", []),
        "job": status.get("job", {}),
        "run_dir": str(cluster.run_dir),
        "restarts": {s.name: s.restarts for s in cluster.services if s.restarts},
        # the delay before each restart (Docker's: 100 ms, doubling after short runs)
        "restart_delays": {s.name: s.restart_delays for s in cluster.services if s.restarts},
        "faults": {name: fired_at(cluster.fault_marker(name)) for name in cluster.faults},
        "shard_restored_from": [s.get("restored_from") for s in status.get("shards", [])],
        # sync: the consistent cut each shard last rewound to after a crash, and the cuts
        "shard_rewound_to": [s.get("rewound_to") for s in status.get("shards", [])],
        "recovery": status.get("recovery", {}),
        # joins, leaves and restarts the coordinator saw (since its own last start)
        "membership": status.get("membership", {}),
        **deadline_summary(status.get("shards", [])),
        # ssp: the largest clock gap any shard saw when a step started, the longest hold
        "max_clock_gap": _max(status.get("shards", []), "max_clock_gap"),
        "max_gate_wait_seconds": _max(status.get("shards", []), "max_gate_wait_seconds"),
        "max_gather_seconds": max(
            (s.get("max_gather_seconds", 0.0) for s in status.get("shards", [])), default=None
        ),
    }


def table_summary(shards: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Sparse tables: each table's rows, rows admitted and evicted, gradient rows dropped,
    summed over the shards (each shard's own are in ``shards``)."""
    totals: dict[str, dict[str, int]] = {}
    for shard in shards:
        for name, counts in shard.get("tables", {}).items():
            table = totals.setdefault(name, {})
            for key, value in counts.items():
                table[key] = table.get(key, 0) + int(value)
    return totals


def _max(shards: list[dict[str, Any]], key: str) -> Any:
    values = [s[key] for s in shards if s.get(key) is not None]
    return max(values) if values else None


def deadline_summary(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """sync: the shards' latest deadlines, steps closed at theirs and gradients per step (each
    shard decides alone; the mean over shards)."""

    def mean(key: str) -> float | None:
        values = [s[key] for s in shards if s.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {
        "deadline_seconds": mean("deadline_seconds"),
        "steps_closed_early": mean("steps_closed_early"),
        "gradients_per_step": mean("gradients_per_step"),
    }


def progress_line(status: dict[str, Any]) -> str:
    accuracy, loss = status.get("accuracy"), status.get("loss")
    held_out = (
        f"held-out loss {loss:.4f} acc {accuracy:.4f}" if accuracy is not None else "held-out -"
    )
    dropped = sum(status.get("gradients", {}).get("dropped", {}).values())
    return (
        f"[{status.get('seconds', 0):7.2f}s] {status.get('phase', '?'):8s} "
        f"step {status.get('step', 0):5d}/{status.get('steps', 0)}  {held_out}  "
        f"live workers {status.get('live_workers', 0)}  dropped {dropped}"
    )


def print_summary(summary: dict[str, Any]) -> None:
    grads = summary["gradients"]
    rows = [
        (
            "accuracy (held-out)",
            f"{summary['accuracy']:.4f}" if summary["accuracy"] is not None else "-",
        ),
        ("loss (held-out)", f"{summary['loss']:.4f}" if summary["loss"] is not None else "-"),
        *(
            (
                ("auc (held-out)", f"{summary['auc']:.4f}"),
                ("oracle auc", f"{summary['oracle_auc']:.4f}"),
            )
            if summary.get("auc") is not None and summary.get("oracle_auc") is not None
            else ()
        ),
        *(
            (
                f"table {name}: rows",
                f"{t['rows']} ({t['admitted']} admitted, "
                f"{t['evicted_expired'] + t['evicted_capacity']} evicted)",
            )
            for name, t in summary.get("tables", {}).items()
        ),
        ("steps", str(summary["steps"])),
        ("seconds", f"{summary['seconds']:.2f}"),
        ("seconds per step", _fmt(summary["step_seconds"])),
        ("fast workers' step time", _fmt(summary["fast_worker_step_seconds"])),
        ("slow workers' step time", _fmt(summary["slow_worker_step_seconds"])),
        ("gradients applied", str(grads.get("applied", 0))),
        *(
            (f"workers {what}", str(count))
            for what, count in summary.get("membership", {}).items()
            if what != "shard_restarts" and count
        ),
        *(
            (("restarts", ", ".join(f"{n} {c}" for n, c in summary["restarts"].items())),)
            if summary.get("restarts")
            else ()
        ),
        *(
            (
                ("deadline (latest step)", _fmt(summary["deadline_seconds"])),
                ("steps closed early", f"{summary['steps_closed_early']:.0f}"),
                ("gradients per step", f"{summary['gradients_per_step']:.2f}"),
            )
            if summary.get("deadline_seconds") is not None
            else ()
        ),
        *(
            (("largest clock gap (ssp)", str(summary["max_clock_gap"])),)
            if summary.get("max_clock_gap") is not None
            else ()
        ),
        *(
            (f"gradients dropped: {reason}", str(count))
            for reason, count in sorted(grads.get("dropped", {}).items())
            if count
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nsummary")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"

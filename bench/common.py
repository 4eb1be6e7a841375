"""What the benchmarks share: timing by median of repeats, tables, JSON, helper processes."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def parse_count(text: str) -> int:
    """'1e6' -> 1000000; counts on the command line read better in scientific notation."""
    value = float(text)
    if value < 1 or value != int(value):
        raise ValueError(f"{text!r} is not a positive whole number")
    return int(value)


def counts(text: str) -> list[int]:
    return [parse_count(part) for part in text.split(",") if part.strip()]


def median_rate(run: Callable[[], tuple[int, float]], repeats: int) -> tuple[float, list[float]]:
    """Median of ``repeats`` rates; ``run`` returns (operations, seconds) of one repeat."""
    rates = []
    for _ in range(repeats):
        ops, seconds = run()
        rates.append(ops / seconds)
    return statistics.median(rates), rates


def time_calls(fn: Callable[[], Any], *, min_s: float, min_calls: int = 2) -> tuple[int, float]:
    """Call ``fn`` until ``min_s`` passed and at least ``min_calls`` calls were made."""
    calls = 0
    started = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - started
        if calls >= min_calls and elapsed >= min_s:
            return calls, elapsed


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    fmt: str = "{}"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    cells = [[c.title for c in columns]]
    for row in rows:
        cells.append(["-" if row.get(c.key) is None else c.fmt.format(row[c.key]) for c in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import numpy as np

    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "platform": sys.platform,
    }


def pscluster_up(flags: Sequence[str], run_dir: Path, timeout_s: float = 600) -> dict[str, Any]:
    """Run ``pscluster up`` with ``flags`` (logs under ``run_dir``, which must not exist yet) and
    return its summary; raise with the launcher's output if it fails."""
    summary_path = run_dir.with_name(run_dir.name + "-summary.json")
    command = [
        *(sys.executable, "-m", "launcher.cli", "up", "--quiet"),
        *("--run-dir", str(run_dir), "--summary-json", str(summary_path)),
        *flags,
    ]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}:\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    return summary


def write_json(path: Path | None, bench: str, rows: list[dict[str, Any]], **extra: Any) -> None:
    if path is None:
        return
    document = {"bench": bench, "machine": machine(), **extra, "rows": rows}
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"figures written to {path}")


class Helper:
    """A helper process (a server under test) that prints one ready line with its address.

    It lives until the benchmark closes its stdin, so it never outlives the benchmark.
    """

    def __init__(self, args: Sequence[str], *, timeout_s: float = 60.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line:
            code = self.process.wait(timeout_s)
            raise RuntimeError(f"helper {args} exited with {code} before it was ready")
        self.address = line

    def close(self) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.close()
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Helper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of process ``pid`` so far (nanosecond counters of
    /proc/<pid>/task/*/schedstat; /proc/<pid>/stat counts in 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def announce_and_wait_for_stdin_eof(address: str) -> None:
    """In a helper: say where we listen, then block until the benchmark closes our stdin."""
    print(address, flush=True)
    sys.stdin.buffer.read()


def serve_shard(make_state: Callable[[Any], Any], **settings: Any) -> None:
    """In a helper: the shard's real app around the state that ``make_state(metrics)`` builds,
    handed its job directly instead of by a coordinator (so it announces itself to none); says
    "<data address> <token>" and serves until the benchmark closes our stdin."""
    import asyncio
    import secrets

    import uvloop

    from ps_server.app import DATA_URL, METRICS, SLOT, announce_loop, build_app
    from pscluster.service import running_service
    from pscluster.settings import ShardSettings

    token = secrets.token_urlsafe(16)
    shard_settings = ShardSettings(host="127.0.0.1", port=0, token=token, **settings)

    def factory(url: str) -> Any:
        app = build_app(shard_settings, url)
        app.cleanup_ctx.remove(announce_loop)
        app[SLOT].state = make_state(app[METRICS])
        app[SLOT].ready.set()
        return app

    async def main() -> None:
        async with running_service(factory, shard_settings) as (_, app):
            loop = asyncio.get_running_loop()
            address = f"{app[DATA_URL][0]} {token}"
            await loop.run_in_executor(None, announce_and_wait_for_stdin_eof, address)

    uvloop.run(main())

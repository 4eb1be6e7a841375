"""`pscluster up` end to end: real processes on loopback, spare replicas against a straggler."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def pscluster_up(tmp_path: Path, name: str, *flags: str, timeout: float = 120) -> dict:
    summary = tmp_path / f"{name}.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "up",
            "--quiet",
            "--run-dir",
            str(tmp_path / name),
            "--summary-json",
            str(summary),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(summary.read_text())
    data["stdout"] = result.stdout
    return data


STRAGGLER = ["--delay", "fixed", "--delay-s", "0.01", "--slow-workers", "1", "--slow-factor", "5"]
JOB = [
    "--shards",
    "2",
    "--steps",
    "150",
    "--model",
    "mlp",
    "--dataset",
    "digits",
    "--seed",
    "0",
    "--eval-every",
    "1000",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("up")
    return {
        "spares": pscluster_up(tmp, "spares", *JOB, "--workers", "3", "--spares", "1", *STRAGGLER),
        # The same N without a spare: every step averages as many gradients, so accuracies
        # compare like for like, and every step waits for the slow worker.
        "no_spares": pscluster_up(tmp, "no_spares", *JOB, "--workers", "3", *STRAGGLER),
    }


def test_summary_and_urls(runs: dict[str, dict]) -> None:
    run = runs["spares"]
    assert run["steps"] == 150
    assert run["seconds"] > 0
    assert set(run["gradients"]) >= {"applied", "dropped"}
    endpoints = run["endpoints"]
    assert len(endpoints["shards"]) == 2 and len(endpoints["workers"]) == 4
    for url in [endpoints["coordinator"], *endpoints["shards"], *endpoints["workers"]]:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert url in run["stdout"]  # printed at start
    # 150 steps x N = 3 gradients on each of 2 shards, but for the first steps: while the
    # workers still register, fewer than N are live and a step averages what they send (as
    # test_prometheus allows too); with steps of a few milliseconds that can be a few steps.
    assert 150 * 3 * 2 - 60 <= run["gradients"]["applied"] <= 150 * 3 * 2


def test_spares_drop_the_slow_workers_pushes(runs: dict[str, dict]) -> None:
    workers = {w["worker_id"]: w for w in runs["spares"]["workers"]}
    slow = workers["worker0"]
    assert slow["delay_factor"] == 5.0
    pushes = slow["pushes"]
    total = sum(pushes.values())
    assert total > 0
    # The 5x slower worker almost never makes the fastest 3 of 4: its pushes arrive late.
    assert pushes.get("late", 0) >= 0.75 * total, pushes
    assert runs["spares"]["gradients"]["dropped"]["late"] >= pushes.get("late", 0)
    fast_steps = [w["steps"] for wid, w in workers.items() if wid != "worker0"]
    assert min(fast_steps) > slow["steps"]


def test_without_spares_every_step_waits_for_the_slow_worker(runs: dict[str, dict]) -> None:
    run = runs["no_spares"]
    workers = {w["worker_id"]: w for w in run["workers"]}
    assert run["gradients"]["dropped"]["late"] == 0, (run["gradients"], workers)
    # Every push of the slow worker was waited for and applied, on both shards. Steps that
    # closed while it was still registering (a shard aggregates the live workers) went without
    # it: under load (load average 15), 15 of the 150 were seen.
    slow = workers["worker0"]
    assert slow["pushes"].get("applied") == 2 * slow["steps"], workers
    assert slow["steps"] >= 100, workers
    applied = sum(w["pushes"].get("applied", 0) for w in workers.values())
    assert run["gradients"]["applied"] == applied <= 150 * 3 * 2


def test_spares_cost_no_accuracy(runs: dict[str, dict]) -> None:
    spares, no_spares = runs["spares"]["accuracy"], runs["no_spares"]["accuracy"]
    assert spares >= 0.9
    assert spares >= no_spares - 0.02, (spares, no_spares)


def test_bad_flags_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "up", "--mode", "async", "--spares", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "PSC_SPARES" in result.stderr


def training_step(coordinator_url: str) -> int:
    """The coordinator's global step (0 until it answers; /status needs no token)."""
    try:
        with urllib.request.urlopen(f"{coordinator_url}/status", timeout=5) as resp:
            return int(json.loads(resp.read())["step"])
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0


def test_ctrl_c_stops_every_service(tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import time

    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "up",
            "--quiet",
            "--steps",
            "100000",
            "--workers",
            "2",
            "--shards",
            "1",
            "--run-dir",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(run_dir.glob("*.url"))) < 4:  # coordinator, shard, two workers
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        urls = [p.read_text().strip() for p in run_dir.glob("*.url")]
        coordinator = (run_dir / "coordinator.url").read_text().strip()
        # Training under way: the shards are past their first versions.
        while training_step(coordinator) < 5:
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(launcher.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        assert launcher.wait(60) == 130
        for url in urls:
            host, port = url.removeprefix("http://").split(":")
            with socket.socket() as sock:
                assert sock.connect_ex((host, int(port))) != 0, f"{url} still listening"
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        launcher.stdout.close()


def test_restarts_are_limited_by_rate_not_by_count() -> None:
    from launcher.processes import RESTART_BURST, RESTART_WINDOW_S, may_restart

    assert may_restart([], 0.0)
    burst = [float(i) for i in range(RESTART_BURST)]
    assert not may_restart(burst, RESTART_BURST + 0.5)  # a crash loop ends the job
    # The same number of restarts spread over a long job never does, nor do many more.
    spread = [i * RESTART_WINDOW_S for i in range(100)]
    assert may_restart(spread, spread[-1] + 1.0)
    assert may_restart(burst, burst[-1] + RESTART_WINDOW_S + 0.1)

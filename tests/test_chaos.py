"""Chaos: a seeded harness SIGKILLs a random service of a running `pscluster up` every 2 s,
12 times, workers included; the launcher restarts each as its compose restart policy says
(``launcher.restart_policy``) and the job still reaches 95% held-out accuracy."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

KILLS = 12
INTERVAL_S = 2.0
TARGET_ACCURACY = 0.95
STEPS = 1500
COMMAND = [sys.executable, "-m", "launcher.cli", "up", "--quiet"]
SERVICES = 1 + 2 + 4  # coordinator, shards, workers


def children(pid: int) -> list[int]:
    """The launcher's child processes (its services), from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def service_of(pid: int) -> str | None:
    """The service module a live child runs (``python -m MODULE``); None for one that is dead
    and not yet reaped (a zombie: killing it would be no kill)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    if state == "Z":
        return None
    return argv[2].decode() if len(argv) > 2 and argv[1] == b"-m" else None


def test_random_sigkills_every_two_seconds(tmp_path: Path) -> None:
    summary, run_dir = tmp_path / "summary.json", tmp_path / "run"
    flags = ["--shards", "2", "--workers", "3", "--spares", "1", "--steps", str(STEPS)]
    flags += ["--seed", "0", "--checkpoint-every", "50", "--heartbeat-lease-s", "2"]
    # A simulated 20 ms per step: at most 50 steps a second, so the job outlasts the kills.
    flags += ["--delay", "fixed", "--delay-s", "0.02", "--eval-every", "500", "--timeout", "150"]
    launcher = subprocess.Popen(
        [*COMMAND, "--summary-json", str(summary), "--run-dir", str(run_dir), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    rng = random.Random(7)
    killed: list[str] = []
    try:
        # Every service has written its ready file: the cluster is up and training.
        deadline = time.monotonic() + 60
        while len(list(run_dir.glob("*.url"))) < SERVICES:
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.1)
        for _ in range(KILLS):
            time.sleep(INTERVAL_S)
            assert launcher.poll() is None, launcher.stdout.read().decode()  # type: ignore[union-attr]
            victims = sorted((p, s) for p in children(launcher.pid) if (s := service_of(p)))
            kinds = sorted({s for _, s in victims})
            # Each kind in turn gets its chance: a random kind, then a random process of it.
            kind = rng.choice(kinds)
            pid = rng.choice([p for p, s in victims if s == kind])
            os.kill(pid, signal.SIGKILL)
            killed.append(kind)
        out, _ = launcher.communicate(timeout=150)
    finally:
        if launcher.poll() is None:
            # SIGTERM first: the launcher stops its services; a SIGKILL would orphan them.
            services = children(launcher.pid)
            launcher.terminate()
            try:
                launcher.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.communicate(timeout=30)
            for pid in services:
                if service_of(pid) is not None:
                    os.kill(pid, signal.SIGKILL)
    text = out.decode()
    assert launcher.returncode == 0, text
    assert len(killed) == KILLS and {"worker", "ps_server", "coordinator"} <= set(killed)
    run = json.loads(summary.read_text())
    # Every kill was seen and answered by one restart, and the job finished to its usual level.
    assert text.count("restarting") == KILLS, text
    assert sum(run["restarts"].values()) == KILLS
    # Each restarted as its compose restart policy says, after Docker's delay: 100 ms, doubled
    # after a run shorter than 10 s, 100 ms again after a longer one.
    for name, delays in run["restart_delays"].items():
        assert delays[0] == 0.1, (name, delays)
        assert all(b in (0.1, 2 * a) for a, b in itertools.pairwise(delays)), delays
    assert run["steps"] == STEPS
    assert run["accuracy"] >= TARGET_ACCURACY

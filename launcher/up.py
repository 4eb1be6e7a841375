"""``pscluster up``: a whole cluster as local processes on loopback, with progress and a summary.

The same services compose runs as containers, started here as subprocesses on free ports: the
coordinator first, then the shards, then N + k workers. It follows the coordinator's ``/status``,
prints progress, and when the job is done stops everything with SIGTERM and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launcher.processes import (
    RESTART_BURST,
    RESTART_WINDOW_S,
    Cluster,
    LaunchError,
    Service,
    free_port,
    may_restart,
)
from launcher.report import get_status, print_summary, progress_line, summarize
from launcher.restart_policy import policy_for, restart_delay, restarts_after
from pscluster.settings import (
    ENV_PREFIX,
    Backend,
    CoordinatorSettings,
    DelayKind,
    JobConfig,
    ServiceSettings,
    load_settings,
)
from pscluster.settings.job import divergence_warnings
from pscluster.settings.timeouts import (
    READY_POLL_S,
    SERVICE_READY_TIMEOUT_S,
    STATUS_POLL_S,
    STATUS_RETRY_S,
    WORKERS_LEAVE_S,
)
from pscluster.startup import add_settings_flags

# Job flags the launcher hands to the coordinator; service fields (host, port, ...) it sets itself.
JOB_FIELDS = [
    *JobConfig.model_fields,
    *(f for f in CoordinatorSettings.model_fields if f not in ServiceSettings.model_fields),
]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pscluster up",
        description="Start a coordinator, M shards and N + k workers on loopback and train.",
    )
    add_settings_flags(parser, CoordinatorSettings, only=JOB_FIELDS)
    parser.add_argument("--summary-json", type=Path, help="Write the final summary here.")
    parser.add_argument("--run-dir", type=Path, help="Logs and ready files (default: a temp dir).")
    parser.add_argument("--timeout", type=float, default=900.0, help="Give up after this long.")
    parser.add_argument("--progress-every", type=float, default=1.0, help="Seconds between lines.")
    parser.add_argument("--quiet", action="store_true", help="Only the URLs and the summary.")
    parser.add_argument(
        "--kill",
        action="append",
        default=[],
        metavar="SERVICE@STEP",
        help="Fault injection: SIGKILL a service once at a step, e.g. ps0@40, worker1@30, "
        "coordinator@50 (repeatable).",
    )
    parser.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        default="auto",
        help="Workers' array backend (auto: CuPy when a GPU is present; a PyTorch model: "
        "CUDA when torch.cuda.is_available()).",
    )
    stragglers = parser.add_argument_group("straggler simulation")
    stragglers.add_argument(
        "--delay",
        choices=[k.value for k in DelayKind],
        default="none",
        help="Per-step delay pattern for every worker.",
    )
    stragglers.add_argument(
        "--delay-s", type=float, default=0.0, help="Base per-step delay, seconds."
    )
    stragglers.add_argument(
        "--slow-workers",
        type=int,
        default=0,
        help="How many workers are slow (the first ones started).",
    )
    stragglers.add_argument(
        "--slow-factor",
        type=float,
        default=5.0,
        help="How many times slower a slow worker's delays are.",
    )
    return parser.parse_args(argv)


def torch_threads(workers: int, cores: int | None = None) -> int:
    """CPU threads for each of ``workers`` local workers: the cores shared out, at least one."""
    return max(1, (cores or os.cpu_count() or 1) // workers)


def parse_faults(specs: Sequence[str]) -> dict[str, int]:
    faults = {}
    for spec in specs:
        name, _, step = spec.partition("@")
        if not name or not step.isdigit():
            raise LaunchError(f"--kill {spec!r}: expected SERVICE@STEP, e.g. ps0@40")
        faults[name] = int(step)
    return faults


def launch(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {name: getattr(args, name) for name in JOB_FIELDS if hasattr(args, name)}
    # A fresh cluster token per run: only these processes can change this model.
    token = secrets.token_urlsafe(24)
    # Exits 2 on bad flags, before anything starts.
    settings = load_settings(CoordinatorSettings, {**overrides, "token": token})
    for warning in divergence_warnings(settings.job()):
        print(f"warning: {warning}", file=sys.stderr)
    if args.run_dir is not None and args.run_dir.exists() and any(args.run_dir.iterdir()):
        # Its checkpoints would resume an older run under a new coordinator.
        raise LaunchError(f"--run-dir {args.run_dir} is not empty; give a new or empty folder")
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="pscluster-"))
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    base_env[f"{ENV_PREFIX}TOKEN"] = token
    cluster = Cluster(run_dir, base_env, parse_faults(args.kill))
    job_env = {
        f"{ENV_PREFIX}{name.upper()}": str(getattr(value, "value", value))
        for name, value in settings.model_dump(include=set(JOB_FIELDS)).items()
        if value is not None
    }
    try:
        cluster.coordinator = cluster.start("coordinator", "coordinator", job_env)
        coordinator_url = cluster.wait_ready(cluster.coordinator)
        link = {f"{ENV_PREFIX}COORDINATOR_URL": coordinator_url}
        cluster.shards = [
            cluster.start(
                f"ps{i}",
                "ps_server",
                {
                    **link,
                    f"{ENV_PREFIX}SHARD_INDEX": str(i),
                    f"{ENV_PREFIX}CHECKPOINT_DIR": str(run_dir / f"ps{i}"),
                    # Fixed for the shard's life, as compose's and Kubernetes' are: a restarted
                    # shard is found on its data port by workers that registered before.
                    f"{ENV_PREFIX}DATA_PORT": str(free_port()),
                },
            )
            for i in range(settings.shards)
        ]
        # Workers start once every shard holds its job, so that they all register at once: one
        # that tried too early would back off and join late (in ssp mode, behind the others).
        for shard in cluster.shards:
            wait_holds_job(cluster.wait_ready(shard))
        for index in range(settings.world):
            slow = index < args.slow_workers
            cluster.workers.append(
                cluster.start(
                    f"worker{index}",
                    "worker",
                    {
                        **link,
                        f"{ENV_PREFIX}WORKER_ID": f"worker{index}",
                        # worker{i} asks for rank i, so "the first K workers are slow" names
                        # ranks too (rank 0 leads an async warmup).
                        f"{ENV_PREFIX}RANK": str(index),
                        f"{ENV_PREFIX}DELAY": args.delay,
                        f"{ENV_PREFIX}DELAY_S": str(args.delay_s),
                        f"{ENV_PREFIX}DELAY_FACTOR": str(args.slow_factor if slow else 1.0),
                        f"{ENV_PREFIX}BACKEND": args.backend,
                        # N + k workers share this host's cores (a torch model's threads).
                        f"{ENV_PREFIX}TORCH_THREADS": str(torch_threads(settings.world)),
                    },
                )
            )
        print(f"coordinator  {coordinator_url}")
        for service in [*cluster.shards, *cluster.workers]:
            print(f"{service.name:<12} {cluster.wait_ready(service)}")
        print(f"logs in {run_dir / 'logs'}", flush=True)
        training_started = time.monotonic()
        status = follow(cluster, coordinator_url, args)
        wall_s = time.monotonic() - training_started
        # Workers leave by themselves once every shard says done; give them a moment.
        deadline = time.monotonic() + WORKERS_LEAVE_S
        for worker in cluster.workers:
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        status = get_status(coordinator_url)
        if cluster.coordinator.restarts:
            # A restarted coordinator's clock started again; the launcher's did not.
            status["seconds"] = wall_s
        return summarize(status, cluster)
    finally:
        # A second Ctrl-C must not cut the clean stop short and leave services behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        codes = cluster.stop()
        bad = {name: code for name, code in codes.items() if code not in (0, None)}
        if bad:
            print(f"services that exited non-zero: {bad}", file=sys.stderr)


def follow(cluster: Cluster, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Print progress until the coordinator says done; fail fast if a core service dies."""
    deadline = time.monotonic() + args.timeout
    last_printed = 0.0
    while time.monotonic() < deadline:
        for service in [cluster.coordinator, *cluster.shards, *cluster.workers]:
            assert service is not None
            returncode = service.process.poll()
            if returncode is not None:
                supervise(cluster, service, returncode)
        try:
            status = get_status(url)
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            time.sleep(STATUS_RETRY_S)
            continue
        now = time.monotonic()
        if not args.quiet and (
            now - last_printed >= args.progress_every or status["phase"] == "done"
        ):
            print(progress_line(status), flush=True)
            last_printed = now
        if status["phase"] == "done":
            return status
        time.sleep(STATUS_POLL_S)
    raise LaunchError(f"job not done after {args.timeout} s")


def supervise(cluster: Cluster, service: Service, returncode: int) -> None:
    """A service has exited: restart it as its compose restart policy says, after Docker's
    delay (without holding up the watch over the others), or end the job when it crash-loops."""
    now = time.monotonic()
    if service.restart_due is not None:
        if now >= service.restart_due:
            service.restart_due = None
            cluster.restart(service)
        return
    if not restarts_after(policy_for(service.name), returncode):
        if service in cluster.workers:
            return  # a worker that is done (exit 0)
        raise LaunchError(f"{service.name} stopped (exit {returncode}); see {service.log_path}")
    if not may_restart(service.restart_times, now):
        raise LaunchError(
            f"{service.name} keeps dying (exit {returncode}, {RESTART_BURST} times "
            f"within {RESTART_WINDOW_S:.0f} s); see {service.log_path}"
        )
    previous = service.restart_delays[-1] if service.restart_delays else None
    delay = restart_delay(previous, now - service.started_at)
    service.restart_delays.append(delay)
    service.restart_due = now + delay
    print(f"{service.name} died (exit {returncode}); restarting in {delay:.1f} s")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def wait_holds_job(url: str, timeout_s: float = SERVICE_READY_TIMEOUT_S) -> None:
    """Until the service at ``url`` answers ``/readyz`` with 200 (a shard: it holds its job)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=STATUS_RETRY_S + 1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # 503 until it holds its job, or not listening yet
        time.sleep(READY_POLL_S)
    raise LaunchError(f"{url} did not become ready within {timeout_s} s")


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    # Ctrl-C or SIGTERM: stop every service cleanly, even where the shell started us with SIGINT
    # ignored (a background job), which would leave Python's own handler off.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C reaches the children too (same process group); the launcher just stops them cleanly.
    try:
        summary = launch(args)
    except KeyboardInterrupt:
        print("\ninterrupted: services stopped", file=sys.stderr)
        return 130
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_summary(summary)
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {args.summary_json}")
    return 0

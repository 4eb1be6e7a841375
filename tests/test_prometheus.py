"""A real Prometheus (Debian's binary) scrapes a real local cluster started by ``pscluster up``.

Through Prometheus' HTTP API: every target is up, the shards' applied-gradient counters rise (and
agree with their versions), the coordinator's held-out accuracy is there and > 0.5, and every
query of the Grafana dashboard runs on the metrics the services export. ``promtool check
metrics`` finds nothing to report on any service's ``/metrics``. Everything on 127.0.0.1, every
call bounded in time and count; Prometheus and the cluster are torn down in ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
N, K, SHARDS = 4, 1, 2
WORKERS = [f"worker{i}" for i in range(N + K)]
SERVICES = ["coordinator", *(f"ps{i}" for i in range(SHARDS)), *WORKERS]
# At least 15 s of training (1500 steps of >= 10 ms) on any machine: the tests look at a running
# cluster, and teardown interrupts it once they are done (~15 s in all on 2 cores).
UP = [
    "up", "--shards", str(SHARDS), "--workers", str(N), "--spares", str(K), "--steps", "1500",
    "--delay", "fixed", "--delay-s", "0.01", "--eval-every", "20", "--quiet",
]  # fmt: skip
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout_s: float = 5.0) -> bytes:
    assert url.startswith("http://127.0.0.1:"), url
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return resp.read()


def eventually(probe: Callable[[], T | None], what: str, timeout_s: float = 30.0) -> T:
    """Poll ``probe`` (at most ~4 times a second) until it returns a value, within a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.25)


@dataclass
class Stack:
    urls: dict[str, str]  # service name -> its URL
    prometheus: str
    launcher: subprocess.Popen[bytes]

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        reply = json.loads(http_get(f"{self.prometheus}/api/v1/{path}{query}"))
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def values(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def running(self) -> bool:
        return self.launcher.poll() is None


def stop(process: subprocess.Popen[bytes], group: bool, sig: int) -> None:
    """Signal, wait within a grace period, then kill what is left."""
    if process.poll() is None:
        os.killpg(process.pid, sig) if group else process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL) if group else process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = shutil.which("prometheus")
    # Not a skip: CI installs Debian's prometheus (.ci/run); without it this is a failure.
    assert prometheus_bin, "prometheus is not installed (apt-get install prometheus)"
    tmp = tmp_path_factory.mktemp("prometheus")
    run_dir = tmp / "run"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PSC_")}
    launcher = prometheus = None
    try:
        with (tmp / "up.log").open("wb") as log:
            # Its own process group: teardown stops the launcher and every service it started.
            launcher = subprocess.Popen(
                [sys.executable, "-m", "launcher.cli", *UP, "--run-dir", str(run_dir)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

        def ready_urls() -> dict[str, str] | None:
            assert launcher is not None and launcher.poll() is None, (tmp / "up.log").read_text()
            files = {name: run_dir / f"{name}.url" for name in SERVICES}
            if not all(path.exists() for path in files.values()):
                return None
            return {name: path.read_text().strip() for name, path in files.items()}

        # Prometheus starts beside the cluster and finds its targets in a file written once the
        # services are ready (their ports are free ones): its discovery's first ~5 s overlap
        # with the cluster's start-up.
        (tmp / "targets").mkdir()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [
                {
                    "job_name": job,
                    "file_sd_configs": [
                        {"files": [str(tmp / "targets" / f"{job}.json")], "refresh_interval": "1s"}
                    ],
                }
                for job in ("coordinator", "ps", "worker")
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        with (tmp / "prometheus.log").open("wb") as log:
            prometheus = subprocess.Popen(
                [
                    prometheus_bin,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        base = f"http://127.0.0.1:{port}"

        urls = eventually(ready_urls, "every service of `pscluster up` ready", 60)

        def group(names: list[str], **labels: str) -> dict[str, Any]:
            return {"targets": [urls[n].removeprefix("http://") for n in names], "labels": labels}

        groups = {
            "coordinator": [group(["coordinator"])],
            "ps": [group([f"ps{i}"], shard=str(i)) for i in range(SHARDS)],
            "worker": [group(WORKERS)],
        }
        for job, content in groups.items():
            tmp_file = tmp / "targets" / f"{job}.json.tmp"
            tmp_file.write_text(json.dumps(content))
            tmp_file.rename(tmp / "targets" / f"{job}.json")  # atomic: never half a file

        def prometheus_ready() -> bool | None:
            assert prometheus is not None and prometheus.poll() is None, (
                tmp / "prometheus.log"
            ).read_text()
            try:
                http_get(f"{base}/-/ready", 1.0)
            except OSError:
                return None
            return True

        eventually(prometheus_ready, "Prometheus ready", 30)
        yield Stack(urls, base, launcher)
    finally:
        if prometheus is not None:
            stop(prometheus, group=False, sig=signal.SIGTERM)
        if launcher is not None:
            # Ctrl-C for the launcher's group: it stops its services with SIGTERM, then exits.
            stop(launcher, group=True, sig=signal.SIGINT)


# The cluster trains for ~10-15 s: the tests that need it running come first.


def test_promtool_reports_nothing_on_every_services_metrics(stack: Stack) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (apt-get install prometheus)"
    for name, url in stack.urls.items():
        body = http_get(f"{url}/metrics")
        assert b"# TYPE" in body, name
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
        )
        report = (checked.stdout + checked.stderr).decode()
        assert checked.returncode == 0 and report == "", f"{name}: {report}"


def test_every_target_is_up(stack: Stack) -> None:
    expected = {f"{url}/metrics" for url in stack.urls.values()}

    def all_up() -> list[dict[str, Any]] | None:
        assert stack.running(), "the cluster finished before Prometheus saw every target up"
        active = stack.api("targets", state="active")["activeTargets"]
        up = [t for t in active if t["health"] == "up"]
        return active if len(up) == len(active) == len(expected) else None

    active = eventually(all_up, "every target up", 20)
    assert {t["scrapeUrl"] for t in active} == expected
    assert {t["labels"]["job"] for t in active} == {"coordinator", "ps", "worker"}
    assert stack.values("sum by (job) (up)", "job") == {
        "coordinator": 1.0,
        "ps": float(SHARDS),
        "worker": float(N + K),
    }


def test_applied_gradient_counters_rise_and_agree_with_versions(stack: Stack) -> None:
    applied = "sum by (shard) (ps_gradients_applied_total)"
    first = eventually(
        lambda: ((v := stack.values(applied, "shard")) and len(v) == SHARDS and v) or None,
        "both shards' applied counters scraped",
    )

    def risen() -> dict[str, float] | None:
        now = stack.values(applied, "shard")
        return now if all(now.get(s, 0) > first[s] for s in first) else None

    # Applied gradients beyond N per version: the step being gathered, plus any steps that closed
    # with fewer while the workers were still registering (a shard aggregates the live ones).
    beyond = f"sum by (shard) (ps_gradients_applied_total) - {N} * max by (shard) (ps_version)"
    early = stack.values(beyond, "shard")
    later = eventually(risen, f"applied gradients rising past {first}", 15)
    assert set(later) == {str(i) for i in range(SHARDS)}
    assert all(later[s] > first[s] > 0 for s in first)
    # Sync, N = 4, everyone registered: from then on each version averages exactly 4 gradients,
    # so the surplus only moves by the step being gathered (0-3 gradients).
    gathering = stack.values(beyond, "shard")
    assert len(gathering) == SHARDS, gathering
    assert all(abs(gathering[s] - early[s]) < N for s in early), (early, gathering)
    # Every rank has had gradients applied, counted by rank (a bounded label).
    ranks = stack.values("sum by (rank) (ps_gradients_applied_total)", "rank")
    assert set(ranks) == {str(r) for r in range(N + K)}


def test_dashboard_queries_run_on_exported_metrics(stack: Stack) -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/pscluster.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    names = set(stack.api("label/__name__/values"))
    for expr in exprs:
        stack.query(expr)  # valid PromQL: status success
        used = set(re.findall(r"\b(?:coordinator|ps|worker|http|process)_[a-z_]+\b", expr))
        assert used and used <= names, f"{expr}: {sorted(used - names)} not exported"
    # An HTTP request is counted by endpoint and status code; a data-port request by kind and
    # status.
    codes = stack.values('sum by (code) (http_requests_total{job="ps", endpoint="/state"})', "code")
    assert codes.get("200", 0) > 0
    pushes = stack.values('sum by (status) (ps_data_requests_total{kind="push"})', "status")
    assert pushes.get("applied", 0) > 0


def test_held_out_accuracy_above_half(stack: Stack) -> None:
    # max_over_time: still answers once the job is done and the coordinator has stopped.
    accuracy = "max_over_time(coordinator_eval_accuracy_ratio[5m])"

    def good() -> float | None:
        value = stack.values(accuracy, "job").get("coordinator")
        return value if value is not None and value > 0.5 else None

    assert eventually(good, "held-out accuracy > 0.5", 40) > 0.5
    loss = stack.values("last_over_time(coordinator_eval_loss[5m])", "job")["coordinator"]
    assert 0 < loss < 2.3  # below log(10): better than chance on 10 classes


def test_healthcheck_command(stack: Stack) -> None:
    url = stack.urls["coordinator"]
    port = url.rsplit(":", 1)[1]
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PSC_")}
    command = [sys.executable, "-m", "pscluster.healthcheck"]
    ok = subprocess.run(command, env={**env, "PSC_PORT": port}, timeout=30, capture_output=True)
    assert ok.returncode == 0, ok.stderr
    closed = subprocess.run(
        command, env={**env, "PSC_PORT": str(free_port())}, timeout=30, capture_output=True
    )
    assert closed.returncode == 1 and b"healthcheck:" in closed.stderr

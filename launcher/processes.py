"""The cluster's processes: start each service as a subprocess, wait until it is ready,
restart a dead one on its port, stop them all with SIGTERM (SIGKILL what outlives the grace)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pscluster.settings import ENV_PREFIX
from pscluster.settings.timeouts import READY_POLL_S, SERVICE_READY_TIMEOUT_S, STOP_GRACE_S

# A dead service (coordinator, shard or worker) is restarted on its port as its compose restart
# policy says (``launcher.restart_policy``). Restarts are limited by rate, not by a lifetime
# count: a service that died RESTART_BURST times within RESTART_WINDOW_S is crash-looping (a bad
# setting, a full disk: such a service dies within a second of each start) and ends the job; one
# killed now and then, however often over a long job, even every 2 s, comes back.
RESTART_BURST = 10
RESTART_WINDOW_S = 15.0


def may_restart(
    restart_times: Sequence[float],
    now: float,
    *,
    burst: int = RESTART_BURST,
    window_s: float = RESTART_WINDOW_S,
) -> bool:
    """Whether a service that died at ``now`` may start again, given its earlier restarts."""
    return sum(1 for t in restart_times if now - t < window_s) < burst


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a service that must keep it across restarts (the OS's pick for
    port 0, released at once: taken again by the service a moment later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    name: str
    module: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path
    url: str = ""
    restart_times: list[float] = field(default_factory=list)  # time.monotonic() of each
    started_at: float = field(default_factory=time.monotonic)
    # Docker's restart delay (launcher.restart_policy): the last one, and when the next is due.
    restart_delays: list[float] = field(default_factory=list)
    restart_due: float | None = None

    @property
    def restarts(self) -> int:
        return len(self.restart_times)


@dataclass
class Cluster:
    run_dir: Path
    env: dict[str, str]
    faults: dict[str, int] = field(default_factory=dict)  # service name -> step to SIGKILL at
    coordinator: Service | None = None
    shards: list[Service] = field(default_factory=list)
    workers: list[Service] = field(default_factory=list)

    @property
    def services(self) -> list[Service]:
        head = [self.coordinator] if self.coordinator else []
        return [*self.workers, *self.shards, *head]

    def start(self, name: str, module: str, extra_env: dict[str, str]) -> Service:
        ready = self.run_dir / f"{name}.url"
        env = {
            **self.env,
            **extra_env,
            f"{ENV_PREFIX}HOST": "127.0.0.1",
            f"{ENV_PREFIX}PORT": "0",
            f"{ENV_PREFIX}READY_FILE": str(ready),
        }
        if name in self.faults:
            env[f"{ENV_PREFIX}FAULT_KILL_AT"] = str(self.faults[name])
            env[f"{ENV_PREFIX}FAULT_MARKER"] = str(self.fault_marker(name))
        log_path = self.run_dir / "logs" / f"{name}.log"
        process = self._spawn(module, env, ready, log_path)
        return Service(name, module, env, process, ready, log_path)

    @staticmethod
    def _spawn(
        module: str, env: dict[str, str], ready: Path, log_path: Path
    ) -> subprocess.Popen[bytes]:
        ready.unlink(missing_ok=True)
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", module],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def restart(self, service: Service) -> None:
        """Start a dead service again on the same port: the others know it by its URL. One that
        dies again while starting is started again, as a supervisor would, within the rate."""
        service.env[f"{ENV_PREFIX}PORT"] = service.url.rsplit(":", 1)[1]
        while True:
            service.process = self._spawn(
                service.module, service.env, service.ready_file, service.log_path
            )
            service.restart_times.append(time.monotonic())
            service.started_at = time.monotonic()
            try:
                self.wait_ready(service)
                return
            except LaunchError:
                code = service.process.poll()
                if code is None or not may_restart(service.restart_times, time.monotonic()):
                    raise
                print(f"{service.name} died while starting (exit {code}); restarting")

    def fault_marker(self, name: str) -> Path:
        return self.run_dir / f"fault-{name}"

    def wait_ready(self, service: Service, timeout_s: float = SERVICE_READY_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if service.ready_file.exists():
                service.url = service.ready_file.read_text().strip()
                return service.url
            if service.process.poll() is not None:
                raise LaunchError(
                    f"{service.name} exited with {service.process.returncode}; "
                    f"see {service.log_path}"
                )
            time.sleep(READY_POLL_S)
        raise LaunchError(f"{service.name} not ready after {timeout_s} s; see {service.log_path}")

    def stop(self, grace_s: float = STOP_GRACE_S) -> dict[str, int | None]:
        """SIGTERM everything (workers first, coordinator last); SIGKILL what outlives grace."""
        for service in self.services:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        codes: dict[str, int | None] = {}
        for service in self.services:
            try:
                codes[service.name] = service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                codes[service.name] = service.process.wait()
        return codes


class LaunchError(RuntimeError):
    pass

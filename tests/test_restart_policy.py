"""``pscluster up`` restarts services as docker-compose.yml's restart policies say: one table,
checked against the compose file, and Docker's delay before each restart."""

from __future__ import annotations

from pathlib import Path

import yaml

from launcher.restart_policy import (
    COMPOSE_POLICIES,
    RestartPolicy,
    policy_for,
    restart_delay,
    restarts_after,
)

ROOT = Path(__file__).resolve().parent.parent


def test_the_table_is_the_compose_files() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    pscluster = {name: s for name, s in services.items() if "build" in s}  # our image
    assert set(pscluster) == {"coordinator", "ps0", "ps1", "worker"}
    for name, service in pscluster.items():
        assert policy_for(name) is RestartPolicy(service["restart"]), name
    assert policy_for("worker3") is COMPOSE_POLICIES["worker"]


def test_which_exits_restart() -> None:
    # Workers (on-failure): a crash or a kill, not the exit 0 of a worker whose job is done.
    worker = policy_for("worker0")
    assert restarts_after(worker, 1) and restarts_after(worker, -9)
    assert not restarts_after(worker, 0)
    # Coordinator and shards (unless-stopped): any exit the operator did not ask for.
    for name in ("coordinator", "ps1"):
        assert restarts_after(policy_for(name), 0) and restarts_after(policy_for(name), -9)
    assert not restarts_after(RestartPolicy.NO, 1)


def test_dockers_delay_doubles_after_short_runs_and_resets_after_ten_seconds() -> None:
    delays = [restart_delay(None, 0.5)]
    for _ in range(4):
        delays.append(restart_delay(delays[-1], 2.0))
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert restart_delay(1.6, 10.0) == 0.1  # it ran 10 s: back to the first delay
    assert restart_delay(40.0, 1.0) == 60.0  # at most a minute

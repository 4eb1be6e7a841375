"""The compose deployment: Debian's docker-compose accepts it, and what it sets is what the code
reads (every PSC_* a field of that service's settings, valid together; N + k worker replicas;
Prometheus scraping every service on the port it listens on)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from launcher.cli import SERVICES
from pscluster.settings import ENV_PREFIX, Mode

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"coordinator": 7000, "ps": 7100, "worker": 7200}
TOKEN_IN_CONTAINER = "/run/secrets/cluster_token"


def dotenv(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def compose_config(tmp_path: Path, *args: str) -> dict[str, Any]:
    """``docker-compose config`` with a copy of .env.example as the .env file."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed (.ci/run apt-installs it)"
    env_file = tmp_path / ".env"
    shutil.copy(ROOT / ".env.example", env_file)
    # The caller's own PSC_* would win over the .env file: leave them out.
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    result = subprocess.run(
        [binary, "--env-file", str(env_file), *args, "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"), "--profile", "dashboard")


def pscluster_services(config: dict[str, Any]) -> dict[str, tuple[str, dict[str, str]]]:
    """Compose service -> (pscluster service it runs, its environment)."""
    found = {}
    for name, service in config["services"].items():
        command = service.get("command") or []
        if command and command[0] in SERVICES:
            found[name] = (command[0], service.get("environment") or {})
    return found


def test_services_and_replicas(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"coordinator", "ps0", "ps1", "worker", "prometheus", "grafana"}
    assert {name: cmd for name, (cmd, _) in pscluster_services(config).items()} == {
        "coordinator": "coordinator",
        "ps0": "ps",
        "ps1": "ps",
        "worker": "worker",
    }
    example = dotenv(ROOT / ".env.example")
    n, k = int(example["PSC_WORKERS"]), int(example["PSC_SPARES"])
    assert services["worker"]["deploy"]["replicas"] == n + k == 5
    assert example["WORKER_REPLICAS"] == str(n + k)
    assert services["grafana"]["profiles"] == ["dashboard"]
    assert "profiles" not in services["prometheus"]


def test_every_variable_is_a_setting_and_they_validate(
    config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "cluster_token"
    token.write_text("not-a-real-token\n")
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    settings: dict[str, BaseSettings] = {}
    for name, (command, env) in pscluster_services(config).items():
        cls = SERVICES[command]
        variables = [v for v in env if v.startswith(ENV_PREFIX)]
        unknown = [v for v in variables if v[len(ENV_PREFIX) :].lower() not in cls.model_fields]
        assert not unknown, f"{name}: {unknown} are no fields of {cls.__name__}"
        # The service's settings as the container reads them (the secret mounted at its path).
        assert env["PSC_TOKEN_FILE"] == TOKEN_IN_CONTAINER
        with monkeypatch.context() as patch:
            for variable in variables:
                patch.setenv(variable, str(env[variable]))
            patch.setenv("PSC_TOKEN_FILE", str(token))
            try:
                settings[name] = cls()
            except ValidationError as exc:
                pytest.fail(f"{name}: the compose environment is invalid: {exc}")
    coordinator, ps0, ps1, worker = (settings[n] for n in ("coordinator", "ps0", "ps1", "worker"))
    example = dotenv(ROOT / ".env.example")
    assert coordinator.mode is Mode(example["PSC_MODE"])
    assert coordinator.workers == int(example["PSC_WORKERS"])
    assert coordinator.spares == int(example["PSC_SPARES"])
    # PSC_STEPS= and PSC_MOMENTUM= (empty): the defaults of the mode, as in `pscluster up`
    assert example["PSC_STEPS"] == example["PSC_MOMENTUM"] == ""
    assert (coordinator.steps, coordinator.momentum) == (300, 0.9)
    assert coordinator.max_staleness is None  # PSC_MAX_STALENESS= (empty): the default
    # One shard service per shard the job has, each its own index, advertised by its name.
    assert coordinator.shards == 2
    assert [ps0.shard_index, ps1.shard_index] == [0, 1]
    for name, service in settings.items():
        command = pscluster_services(config)[name][0]
        assert service.host == "0.0.0.0"
        assert service.port == PORTS[command]
        if command != "worker":
            assert service.advertise_url == f"http://{name}:{PORTS[command]}"
        else:
            assert service.advertise_url is None and service.worker_id is None
        if command != "coordinator":
            assert service.coordinator_url == "http://coordinator:7000"
    assert worker.request_timeout_s > 0


def test_shards_keep_checkpoints_in_their_own_volume(config: dict[str, Any]) -> None:
    for name in ("ps0", "ps1"):
        service = config["services"][name]
        assert service["environment"]["PSC_CHECKPOINT_DIR"] == "/data"
        assert service["volumes"] == [f"{name}-data:/data:rw"]
        assert f"{name}-data" in config["volumes"]
    for name in ("coordinator", "ps0", "ps1", "worker"):
        assert [s["source"] for s in config["services"][name]["secrets"]] == ["cluster_token"]


def test_prometheus_scrapes_every_service(config: dict[str, Any]) -> None:
    path = ROOT / "deploy/prometheus/prometheus.yml"
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (.ci/run apt-installs prometheus)"
    checked = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    prometheus = yaml.safe_load(path.read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    static = {
        target
        for job in jobs.values()
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    assert static == {"coordinator:7000", "ps0:7100", "ps1:7100"}
    # Workers by DNS: every replica of the compose service, however many there are.
    (dns,) = jobs["worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["type"] == "A" and dns["port"] == 7200
    mounted = config["services"]["prometheus"]["volumes"]
    assert f"{path}:/etc/prometheus/prometheus.yml:ro" in mounted


def test_grafana_is_provisioned(config: dict[str, Any]) -> None:
    grafana = config["services"]["grafana"]
    deploy = ROOT / "deploy/grafana"
    assert f"{deploy}/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert f"{deploy}/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    datasources = yaml.safe_load((deploy / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["uid"] == "prometheus"
    providers = yaml.safe_load((deploy / "provisioning/dashboards/pscluster.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((deploy / "dashboards/pscluster.json").read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "Held-out accuracy",
        "Held-out loss",
        "Steps per second",
        "Gradients dropped by reason",
        "Staleness",
    } <= titles
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    # The default target (the last stage) is the CPU image; `--target cuda` the GPU workers'.
    stages = [line for line in lines if line.startswith("FROM ")]
    assert stages[-1] == "FROM python:3.11-slim AS cpu"
    assert [s.rsplit(" ", 1)[-1] for s in stages] == ["cuda", "cpu"]
    assert any("pip install" in line and "-c constraints.txt" in line for line in lines)
    assert "USER pscluster" in lines
    assert any("pscluster.healthcheck" in line for line in lines)
    assert lines[-2:] == ['ENTRYPOINT ["pscluster"]', 'CMD ["--help"]']
    # The build context is a list of what the image needs: the token file and .env stay out.
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignored if line.startswith("!")}
    assert "*" in ignored
    assert allowed == {
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "pscluster",
        "ps_server",
        "worker",
        "coordinator",
        "launcher",
    }

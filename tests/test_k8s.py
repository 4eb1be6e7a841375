"""deploy/k8s checked offline: every overlay renders (kubectl kustomize) and validates against a
pinned Kubernetes API schema (kubernetes-validate --strict) and the Prometheus Operator's models;
what the manifests set is what the code reads (every PSC_* a setting, ports and probe paths the
services' own, StatefulSet replicas = PSC_SHARDS, Job parallelism = N + k); each kustomization
lists every file beside it. tests/test_k8s_smoke.py runs what they describe."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from coordinator.app import build_app as coordinator_app
from launcher.cli import SERVICES
from ps_server.app import build_app as shard_app
from pscluster.service import running_service
from pscluster.settings import ENV_PREFIX, ShardSettings
from tests.k8s import K8S, KUBERNETES_VERSION, OVERLAYS, Container, containers, find, render
from worker.app import build_app as worker_app

# Settings the manifests leave out on purpose; every other one is set, at its default or not.
NOT_IN_MANIFESTS = {
    "token": "the token is a mounted Secret file (PSC_TOKEN_FILE), not a variable",
    "ready_file": "for launchers that poll a file; Kubernetes polls /readyz",
    "fault_kill_at": "fault injection, for tests",
    "fault_marker": "fault injection, for tests",
    "shard_index": "read from the pod's name (PSC_SHARD_NAME)",
}
CRD_KINDS = {"ServiceMonitor": monitoring.ServiceMonitor, "PodMonitor": monitoring.PodMonitor}
DOWNWARD = {"ps": "pscluster-ps-1", "coordinator": "pscluster-coordinator-abc", "worker": "w-x"}
APPS = {"coordinator": coordinator_app, "ps": shard_app, "worker": worker_app}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("k8s")
    return {overlay: render(overlay, tmp) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def base(rendered: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return rendered["."]


def fields_of(container: Container) -> dict[str, str]:
    return {"metadata.name": DOWNWARD[container.service], "status.podIP": "10.1.2.3"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_validates_strictly_against_the_kubernetes_schema(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, tmp_path: Path
) -> None:
    docs = [d for d in rendered[overlay] if d["kind"] not in CRD_KINDS]
    assert {d["kind"] for d in docs} >= {"Secret", "Service", "Deployment", "StatefulSet", "Job"}
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    checked = subprocess.run(
        [
            str(Path(sys.executable).with_name("kubernetes-validate")),
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("passed for resource") == len(docs), checked.stdout


def test_strict_validation_refuses_a_misspelt_field(base: list[dict[str, Any]]) -> None:
    job = copy.deepcopy(find(base, "Job", "pscluster-worker"))
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    job["spec"]["template"]["spec"]["restartpolicy"] = "OnFailure"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def unknown_keys(model: type[BaseModel], data: Any, where: str = "") -> list[str]:
    """Keys of ``data`` that are no field of ``model`` (the generated models accept extras)."""
    if not isinstance(data, dict):
        return []
    by_key = {(f.alias or name): f for name, f in model.model_fields.items()}
    found = []
    for key, value in data.items():
        field = by_key.get(key)
        if field is None:
            found.append(f"{where}{key}")
            continue
        for arg in [field.annotation, *typing_args(field.annotation)]:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                items = value if isinstance(value, list) else [value]
                for item in items:
                    found += unknown_keys(arg, item, f"{where}{key}.")
    return found


def typing_args(annotation: Any) -> list[Any]:
    args = []
    for arg in typing.get_args(annotation):
        args += [arg, *typing_args(arg)]
    return args


def test_monitors_validate_against_the_prometheus_operator_models(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = [d for d in rendered["overlays/servicemonitor"] if d["kind"] in CRD_KINDS]
    assert sorted(d["kind"] for d in docs) == ["PodMonitor", "ServiceMonitor"]
    for doc in docs:
        model = CRD_KINDS[doc["kind"]]
        model.model_validate(doc)
        assert unknown_keys(model, doc) == []
    # The check can fail: a misspelt key, and a value the CRD's pattern refuses.
    service_monitor = copy.deepcopy(next(d for d in docs if d["kind"] == "ServiceMonitor"))
    service_monitor["spec"]["endpoints"][0]["paht"] = "/metrics"
    assert unknown_keys(monitoring.ServiceMonitor, service_monitor) == ["spec.endpoints.paht"]
    service_monitor["spec"]["endpoints"][0]["interval"] = "fifteen seconds"
    with pytest.raises(ValueError, match="interval"):
        monitoring.ServiceMonitor.model_validate(service_monitor)
    # The monitors select what the base labels and names.
    base = rendered["."]
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    components = set(monitor["spec"]["selector"]["matchExpressions"][0]["values"])
    services = [d for d in base if d["kind"] == "Service"]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in services} == components
    assert all(
        monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in s["spec"]["ports"]}
        for s in services
    )


def test_every_variable_is_a_setting_and_every_setting_is_set(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for overlay, docs in rendered.items():
        found = containers(docs)
        assert set(found) == set(SERVICES)
        for service, container in found.items():
            cls: type[BaseSettings] = SERVICES[service]
            env = container.env(fields_of(container))
            variables = {v for v in env if v.startswith(ENV_PREFIX)}
            unknown = sorted(v for v in variables if v[4:].lower() not in cls.model_fields)
            assert unknown == [], f"{overlay} {service}: no fields of {cls.__name__}"
            expected = {f"{ENV_PREFIX}{f.upper()}" for f in cls.model_fields} - {
                f"{ENV_PREFIX}{f.upper()}" for f in NOT_IN_MANIFESTS
            }
            assert variables == expected, f"{overlay} {service}: {variables ^ expected}"
            # Valid together, as the container reads them (the Secret's file at its path).
            assert env["PSC_TOKEN_FILE"] == "/var/run/secrets/pscluster/token"
            with monkeypatch.context() as patch:
                for variable in variables:
                    patch.setenv(variable, env[variable])
                patch.setenv("PSC_TOKEN_FILE", str(token))
                settings = cls()
            assert settings.host == "0.0.0.0" and settings.port == container.http_port
            # Every other named port is the one a PSC_*_PORT setting listens on.
            others = {n: p for n, p in container.ports.items() if n != "http"}
            listening = {
                getattr(settings, f)
                for f in cls.model_fields
                if f.endswith("_port") and f != "port"
            }
            assert set(others.values()) <= listening, (service, others, listening)
            if service == "ps":
                assert settings.shard_index == 1  # from the pod name pscluster-ps-1
                assert settings.advertise_url == "http://pscluster-ps-1.pscluster-ps:7100"
            if service == "worker":
                assert settings.worker_id == "w-x"
                assert settings.advertise_url == "http://10.1.2.3:7200"


def test_env_references_name_variables_defined_before_them(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    referenced = 0
    for docs in rendered.values():
        for container in containers(docs).values():
            env = container.env(fields_of(container))
            assert not any("$(" in value for value in env.values()), env
            referenced += sum("$(" in v.get("value", "") for v in container.spec["env"])
    assert referenced == 2 * len(OVERLAYS)  # each shard's and each worker's advertised URL


def test_replicas_match_the_job(base: list[dict[str, Any]]) -> None:
    found = containers(base)
    env = found["coordinator"].env(fields_of(found["coordinator"]))
    assert found["ps"].kind == "StatefulSet"
    assert found["ps"].replicas == int(env["PSC_SHARDS"])
    assert found["coordinator"].kind == "Deployment" and found["coordinator"].replicas == 1
    assert found["worker"].kind == "Job"
    assert found["worker"].replicas == int(env["PSC_WORKERS"]) + int(env["PSC_SPARES"])
    assert found["worker"].pod["restartPolicy"] == "OnFailure"
    assert "completions" not in found["worker"].workload["spec"]


def test_ports_probes_and_urls_match_the_services(base: list[dict[str, Any]]) -> None:
    found = containers(base)
    services = {d["metadata"]["name"]: d for d in base if d["kind"] == "Service"}
    for service, container in found.items():
        settings = SERVICES[service].model_construct(insecure=True)
        routes = {r.resource.canonical for r in APPS[service](settings, "http://x").router.routes()}
        probes = {
            kind: container.spec[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")
        }
        assert probes["readinessProbe"]["path"] == "/readyz"
        assert probes["livenessProbe"]["path"] == "/healthz"
        for probe in probes.values():
            assert probe["path"] in routes and probe["port"] == "http"
        annotations = container.workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(container.http_port)
        assert annotations["prometheus.io/path"] in routes
    # Each Service selects its workload's pods and forwards to their http port.
    for service in services.values():
        (target,) = [
            c
            for c in found.values()
            if service["spec"]["selector"].items()
            <= c.workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert set(ports) == set(target.ports)
        for name, port in ports.items():
            assert port["targetPort"] == name and port["port"] == target.ports[name]
    assert services["pscluster-ps"]["spec"]["clusterIP"] == "None"
    assert found["ps"].workload["spec"]["serviceName"] == "pscluster-ps"
    # Every URL a service is given names a Service and its port.
    coordinator_url = f"http://pscluster-coordinator:{found['coordinator'].http_port}"
    for service in ("ps", "worker"):
        env = found[service].env(fields_of(found[service]))
        assert env["PSC_COORDINATOR_URL"] == coordinator_url
    assert found["coordinator"].env({})["PSC_ADVERTISE_URL"] == coordinator_url


def test_pods_run_as_non_root_with_a_read_only_root(base: list[dict[str, Any]]) -> None:
    secret = next(d for d in base if d["kind"] == "Secret")
    for container in containers(base).values():
        pod = container.pod
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
        assert container.spec["securityContext"]["readOnlyRootFilesystem"] is True
        assert container.spec["securityContext"]["allowPrivilegeEscalation"] is False
        assert set(container.spec["resources"]) == {"requests", "limits"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["token"]["secret"]["secretName"] == secret["metadata"]["name"]
    shards = containers(base)["ps"].workload
    (claim,) = shards["spec"]["volumeClaimTemplates"]
    mounts = {
        m["name"]: m["mountPath"]
        for m in shards["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    env = containers(base)["ps"].env(fields_of(containers(base)["ps"]))
    assert mounts[claim["metadata"]["name"]] == env["PSC_CHECKPOINT_DIR"]
    pdb = find(base, "PodDisruptionBudget", "pscluster-ps")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        shards["spec"]["template"]["metadata"]["labels"].items()
    )


def test_gpu_overlay_asks_for_a_gpu_and_the_cuda_image(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    worker = containers(rendered["overlays/gpu"])["worker"]
    assert worker.spec["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker.spec["image"] == "pscluster-cuda:latest"
    assert worker.env(fields_of(worker))["PSC_BACKEND"] == "cupy"
    # Only the workers change; the Dockerfile has the target the overlay's comment names.
    others = containers(rendered["."])
    assert containers(rendered["overlays/gpu"])["ps"].spec == others["ps"].spec
    dockerfile = (K8S.parent.parent / "Dockerfile").read_text()
    assert " AS cuda" in dockerfile


def listed_files(kustomization: dict[str, Any]) -> set[str]:
    files = set()
    for key in ("resources", "patchesStrategicMerge", "bases"):
        files |= set(kustomization.get(key, []))
    for generator in kustomization.get("secretGenerator", []):
        files |= {entry.partition("=")[2] or entry for entry in generator.get("files", [])}
    return files


def test_each_kustomization_lists_every_file_beside_it() -> None:
    directories = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
    assert [d.relative_to(K8S).as_posix() for d in directories] == [
        ".",
        "base",
        "overlays/gpu",
        "overlays/servicemonitor",
    ]
    for directory in directories:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        listed = listed_files(kustomization)
        beside = {
            p.name
            for p in directory.iterdir()
            if p.is_file() and p.name not in ("kustomization.yaml", "cluster-token")
        }
        # Files beside it are listed; directories it lists exist (the base, ../../base).
        assert beside == {f for f in listed if (directory / f).is_file()}, directory
        for name in listed - beside:
            assert name == "cluster-token" or (directory / name / "kustomization.yaml").is_file()


async def test_a_shard_is_ready_only_once_it_holds_its_job() -> None:
    # No coordinator answers: the shard lives (/healthz) but holds no job (/readyz is 503).
    # Kubelet probes carry no token: both answer without one, where /state refuses.
    settings = ShardSettings(
        token="t", coordinator_url="http://127.0.0.1:9", register_interval_s=0.05
    )
    async with (
        running_service(lambda url: shard_app(settings, url), settings) as (url, _),
        aiohttp.ClientSession() as session,
    ):
        async with session.get(f"{url}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json()) == {"ready": False, "reason": "waiting for the job"}
        async with session.get(f"{url}/state") as resp:
            assert resp.status == 401

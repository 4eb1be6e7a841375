"""The manifests run: the rendered deploy/k8s started as local processes, each container's own
command with the environment the manifests give it, as a kubelet would (downward-API values
filled in, ``$(VAR)`` expanded, the Secret and the volumes as directories), replicas as
processes, and every Service name mapped to a loopback port. The default job trains to its usual
accuracy; the shards' readiness probes pass; the Job's workers all exit 0; the shards leave
their checkpoints in their volume."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.k8s import Container, containers, render

DEADLINE_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Pod:
    name: str
    container: Container
    local_ports: dict[int, int]  # container port -> the loopback port standing for it
    process: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return self.local_ports[self.container.http_port]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def plan_pods(docs: list[dict[str, Any]]) -> list[Pod]:
    """A pod per replica, named as its controller would name it."""
    pods = []
    for service, container in containers(docs).items():
        for i in range(container.replicas):
            if container.kind == "StatefulSet":
                name = f"{container.name}-{i}"
            else:  # Deployment and Job pods get a generated suffix
                name = f"{container.name}-{service}{i}"
            pods.append(Pod(name, container, {p: free_port() for p in container.ports.values()}))
    return pods


def addresses(docs: list[dict[str, Any]], pods: list[Pod]) -> dict[tuple[str, int], int]:
    """(DNS name, port) as the manifests write them -> the loopback port behind it: a Service's
    name, and each pod's own name under a headless Service (the StatefulSet's shards)."""
    found = {}
    for service in (d for d in docs if d["kind"] == "Service"):
        name, spec = service["metadata"]["name"], service["spec"]
        selected = [
            p
            for p in pods
            if spec["selector"].items()
            <= p.container.workload["spec"]["template"]["metadata"]["labels"].items()
        ]
        if spec.get("clusterIP") != "None":
            assert len(selected) == 1  # one replica behind the Service: the coordinator
        for port in spec["ports"]:
            for pod in selected:
                local = pod.local_ports[pod.container.ports[port["targetPort"]]]
                dns = f"{pod.name}.{name}" if spec.get("clusterIP") == "None" else name
                found[(dns, port["port"])] = local
    return found


def mounted_dirs(pod: Pod, docs: list[dict[str, Any]], tmp: Path) -> dict[str, Path]:
    """Each volume mount as a directory: the Secret's keys as files, emptyDir and claims empty."""
    spec = pod.container.workload["spec"]
    volumes = {v["name"]: v for v in pod.container.pod.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    mounts = {}
    for mount in pod.container.spec.get("volumeMounts", []):
        directory = tmp / pod.name / mount["name"]
        directory.mkdir(parents=True)
        volume = volumes.get(mount["name"])
        if volume is not None and "secret" in volume:
            (secret,) = [
                d
                for d in docs
                if d["kind"] == "Secret" and d["metadata"]["name"] == volume["secret"]["secretName"]
            ]
            for key, value in secret["data"].items():
                (directory / key).write_bytes(base64.b64decode(value))
        else:
            assert volume is not None or mount["name"] in claims, mount
        mounts[mount["mountPath"]] = directory
    return mounts


def local_env(pod: Pod, docs: list[dict[str, Any]], pods: list[Pod], tmp: Path) -> dict[str, str]:
    container = pod.container
    env = container.env({"metadata.name": pod.name, "status.podIP": "127.0.0.1"})
    names = addresses(docs, pods) | {("127.0.0.1", p): pod.local_ports[p] for p in pod.local_ports}
    mounts = mounted_dirs(pod, docs, tmp)

    def localise(value: str) -> str:
        def url(match: re.Match[str]) -> str:
            host, port = match.group(1), int(match.group(2))
            return f"http://127.0.0.1:{names[(host, port)]}"

        value = re.sub(r"http://([A-Za-z0-9.-]+):(\d+)", url, value)
        # The deepest mount holding the path, once (a local directory may itself be under /tmp).
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(mounts[mount_path]) + value[len(mount_path) :]
        return value

    local = {name: localise(value) for name, value in env.items()}
    # Loopback only, on the port standing for the container's.
    assert local["PSC_HOST"] == "0.0.0.0" and local["PSC_PORT"] == str(container.http_port)
    local["PSC_HOST"] = "127.0.0.1"
    # Each PSC_*PORT naming a container port (PSC_PORT, a data plane's) takes its loopback port.
    for name, value in local.items():
        if name.endswith("PORT") and value.isdigit() and int(value) in pod.local_ports:
            local[name] = str(pod.local_ports[int(value)])
    return local


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def wait_for(condition: Any, what: str, pods: list[Pod], deadline: float) -> None:
    while not condition():
        for pod in pods:
            assert pod.process is not None
            if pod.container.kind != "Job":
                assert pod.process.poll() is None, f"{pod.name} exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def probe_path(pod: Pod, kind: str) -> str:
    return pod.container.spec[kind]["httpGet"]["path"]


def test_the_rendered_manifests_train_the_default_job(tmp_path: Path) -> None:
    docs = render(".", tmp_path)
    pods = plan_pods(docs)
    assert sorted(p.name for p in pods if p.container.service == "ps") == [
        "pscluster-ps-0",
        "pscluster-ps-1",
    ]
    base_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PSC_")}
    script = Path(sys.executable).with_name("pscluster")  # the image's ENTRYPOINT, installed
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        for pod in pods:
            env = {**base_env, **local_env(pod, docs, pods, tmp_path / "volumes")}
            (command, *args) = [*pod.container.spec["command"], *pod.container.spec["args"]]
            assert command == "pscluster"
            with open(logs / f"{pod.name}.log", "wb") as log:
                pod.process = subprocess.Popen(
                    [str(script), *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
        deadline = time.monotonic() + DEADLINE_S
        coordinator = next(p for p in pods if p.container.service == "coordinator")
        shards = [p for p in pods if p.container.service == "ps"]
        workers = [p for p in pods if p.container.kind == "Job"]
        # The readiness probes pass: each shard holds its job; liveness answers too.
        for pod in [coordinator, *shards]:
            path = probe_path(pod, "readinessProbe")
            wait_for(
                lambda p=pod, q=path: get(p.url(q))[0] == 200, f"{pod.name} ready", pods, deadline
            )
            assert get(pod.url(probe_path(pod, "livenessProbe")))[0] == 200
        # The Job: every worker exits 0 once the job is done.
        wait_for(
            lambda: all(w.process.poll() is not None for w in workers),
            "the workers",
            pods,
            deadline,
        )
        codes = {w.name: w.process.returncode for w in workers}
        assert codes == {w.name: 0 for w in workers}, codes
        status, job = get(coordinator.url("/status"))
        assert status == 200
        assert job["phase"] == "done" and job["step"] == job["steps"] == 300
        assert job["aggregate"] == 4 and job["spares"] == 1
        assert len(job["workers"]) == 5
        assert job["accuracy"] >= 0.95, job["accuracy"]
        print(
            f"k8s smoke: accuracy {job['accuracy']:.4f}, loss {job['loss']:.4f}, "
            f"{job['step']} steps in {job['seconds']:.1f} s"
        )
        # Each shard advertised its pod's DNS name (mapped here to its loopback port).
        shard_ports = sorted(s.port for s in shards)
        assert sorted(int(s["url"].rsplit(":", 1)[1]) for s in job["shards"]) == shard_ports
    finally:
        for pod in pods:
            if pod.process is not None and pod.process.poll() is None:
                pod.process.send_signal(signal.SIGTERM)
        for pod in pods:
            if pod.process is not None:
                try:
                    pod.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pod.process.kill()
                    pod.process.wait(timeout=10)
    # SIGTERM: the shards exit 0 with a final checkpoint in their volume (the claim's directory).
    for shard in shards:
        assert shard.process is not None and shard.process.returncode == 0, (
            logs / f"{shard.name}.log"
        ).read_text()[-2000:]
        checkpoints = list((tmp_path / "volumes" / shard.name / "checkpoints").iterdir())
        assert checkpoints, f"{shard.name} left no checkpoint"

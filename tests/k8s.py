"""deploy/k8s as the tests read it: each overlay rendered by ``kubectl kustomize``, and the pods
it describes (containers, their environment as Kubernetes expands it, ports and probes)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
# deploy/k8s itself (the base, as `kubectl apply -k deploy/k8s` applies it) and each overlay.
OVERLAYS = (".", "overlays/gpu", "overlays/servicemonitor")
# The Kubernetes release whose API schemas (shipped inside kubernetes-validate) the manifests
# are validated against.
KUBERNETES_VERSION = "1.33.0"
TOKEN = "k8s-test-token"
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def kubectl() -> str:
    binary = shutil.which("kubectl")
    assert binary, "kubectl is not installed (.ci/run apt-installs Debian's kubernetes-client)"
    return binary


def render(overlay: str, tmp: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of a copy of deploy/k8s with a cluster token written in place."""
    copy = tmp / "k8s"
    if not copy.exists():
        shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("cluster-token"))
        (copy / "base" / "cluster-token").write_text(TOKEN + "\n")
    result = subprocess.run(
        [kubectl(), "kustomize", str(copy / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@dataclass(frozen=True)
class Container:
    """One container of a workload: what it runs, with what environment, on what port."""

    workload: dict[str, Any]
    spec: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.workload["kind"]

    @property
    def name(self) -> str:
        return self.workload["metadata"]["name"]

    @property
    def pod(self) -> dict[str, Any]:
        return self.workload["spec"]["template"]["spec"]

    @property
    def service(self) -> str:
        """The pscluster service it runs (``pscluster <service>``)."""
        assert self.spec["command"] == ["pscluster"], self.spec["command"]
        return self.spec["args"][0]

    @property
    def replicas(self) -> int:
        spec = self.workload["spec"]
        return spec["parallelism"] if self.kind == "Job" else spec.get("replicas", 1)

    @property
    def ports(self) -> dict[str, int]:
        """Named container ports: ``http`` (control plane, metrics, probes) and any other."""
        return {p["name"]: p["containerPort"] for p in self.spec["ports"]}

    @property
    def http_port(self) -> int:
        return self.ports["http"]

    def env(self, fields: dict[str, str]) -> dict[str, str]:
        """The environment as the kubelet builds it: downward-API values from ``fields``
        (``metadata.name``, ``status.podIP``), ``$(VAR)`` expanded from variables defined
        earlier in the list, ``$$`` an escaped ``$``."""
        env: dict[str, str] = {}
        for var in self.spec.get("env", []):
            if "valueFrom" in var:
                env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                env[var["name"]] = expand(var.get("value", ""), env)
        return env


def expand(value: str, defined: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return defined.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, value)


def containers(docs: list[dict[str, Any]]) -> dict[str, Container]:
    """pscluster service (coordinator, ps, worker) -> its one container."""
    found = {}
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            (spec,) = doc["spec"]["template"]["spec"]["containers"]
            container = Container(doc, spec)
            assert container.service not in found, container.service
            found[container.service] = container
    return found

"""deploy/ as kustomize and the kubelet read it, for the tests that hold it to the code and run its stores.

No cluster runs here: these helpers give each test what a cluster would, a workload's containers and the
environment Kubernetes gives them (the image's ENV, the generated ConfigMap, the Secret), Kubernetes
quantities and Redis sizes as numbers, and which pods a label selector picks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.support.dockerfile import image_env, runtime_stage

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MIB = 1024 * 1024


def load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def kustomization() -> dict[str, Any]:
    (doc,) = load("kustomization.yaml")
    return doc


def resources() -> list[dict[str, Any]]:
    return [doc for name in kustomization()["resources"] for doc in load(name)]


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in resources() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def service_container() -> dict[str, Any]:
    return container(find("Deployment", "cds-service"), "cds-service")


def config_env() -> dict[str, str]:
    """deploy/config.env as kustomize's configMapGenerator reads it."""
    (generator,) = [g for g in kustomization()["configMapGenerator"] if g["name"] == "cds-config"]
    values: dict[str, str] = {}
    for name in generator["envs"]:
        for line in (DEPLOY / name).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                values[key.strip()] = value
    return values


def secret() -> dict[str, str]:
    return find("Secret", "cds-secrets")["stringData"]


def container_env(workload: dict[str, Any], name: str) -> dict[str, str]:
    """The environment Kubernetes gives the container: the image's ENV (for the service), then envFrom, then
    env, each winning over the one before, with secretKeyRef read from the example Secret."""
    spec = container(workload, name)
    env = image_env(runtime_stage()) if name == "cds-service" else {}
    for source in spec.get("envFrom", []):
        assert source["configMapRef"]["name"] == "cds-config", "only the generated cds-config is known"
        env |= config_env()
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "cds-secrets"
            env[item["name"]] = secret()[ref["key"]]
    return env


def quantity(text: str | int) -> float:
    """A Kubernetes quantity (500m, 1, 384Mi) as a plain number: cores, or bytes."""
    text = str(text)
    units = {"m": 1e-3, "Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def redis_bytes(text: str) -> int:
    """A redis.conf memory size: 1mb is 1024 × 1024 bytes, 1m 1,000,000."""
    units = {"gb": 1024**3, "mb": MIB, "kb": 1024, "g": 10**9, "m": 10**6, "k": 1000}
    for suffix, factor in units.items():
        if text.lower().endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions with In) against a pod's labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "only In is understood here"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def url_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or {"http": 80, "https": 443, "redis": 6379, "postgresql": 5432}[parts.scheme]


def redis_args(password: str | None = None) -> list[str]:
    """deploy/redis.yaml's Redis arguments as the kubelet passes them, ``$(VAR)`` replaced by the container's
    variable (the Secret's password, or ``password``)."""
    workload = find("Deployment", "cds-redis")
    env = container_env(workload, "redis") | ({"REDIS_PASSWORD": password} if password else {})
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg) for arg in container(workload, "redis")["args"]]

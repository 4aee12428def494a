"""The Kubernetes example in deploy/, checked against the service's own code rather than against a copy of it.

No cluster runs here, so each fact a cluster would find out the hard way is checked where it is decided:
the ConfigMap and Secret against ``load_settings`` and ``check_configuration``; the container's args
against ``serve``'s own parser; the probes against the app's routes; the grace period against gunicorn's
options; the paths the service writes against the volumes; requests and limits against the worker count
the CPU limit gives; the network policies against the addresses the configuration names. Redis and
PostgreSQL run for real (redis-server with the manifest's arguments, PostgreSQL 15 with the init script).
"""

from __future__ import annotations

import ipaddress
import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from cds_service import serving
from cds_service.app import UNAUTHENTICATED_PATHS, check_configuration, create_app
from cds_service.config import Settings, load_settings
from cds_service.feedback.store import READINESS_WAIT_S
from cds_service.fhir.memory import DEFAULT_FETCH_MEMORY_BYTES
from cds_service.protocol.jti_store import REDIS_TIMEOUT_S
from tests.deploy.manifests import (
    DEPLOY,
    MIB,
    config_env,
    container_env,
    find,
    kustomization,
    pod_labels,
    quantity,
    resources,
    selects,
    service_container,
    url_port,
)
from tests.support.dockerfile import exec_form, runtime_stage
from tests.support.served import HOOKS_NOW, Served, hook_example

# Resident memory, measured (docs/performance.md): a worker's largest reading over long runs was 73.1 MiB;
# the master, which imports everything before forking, reads about 74 MiB. Checked again below, live.
WORKER_RSS_MIB = 76
MASTER_RSS_MIB = 80
# The service's pods, as the network policies select them.
SERVICE_LABELS = {"app.kubernetes.io/name": "cds-service"}


# --- the files ------------------------------------------------------------------------------------


def test_the_kustomization_lists_every_file_in_deploy() -> None:
    listed = set(kustomization()["resources"])
    for generator in kustomization()["configMapGenerator"]:
        listed |= set(generator.get("files", [])) | set(generator.get("envs", []))
    present = {path.name for path in DEPLOY.iterdir()} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_it_and_every_reference_resolves() -> None:
    """What `kubectl apply -k deploy/` would send: every ConfigMap and Secret a pod names (the generated ones
    by their hashed names, so an edit rolls the pods) exists, with every key it reads."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {"cds"}
    data = {
        (doc["kind"], doc["metadata"]["name"]): set(doc.get("data", {})) | set(doc.get("stringData", {}))
        for doc in docs
        if doc["kind"] in ("ConfigMap", "Secret")
    }
    workloads = [doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")]
    references = list(_references(workloads))
    assert ("ConfigMap", "cds-config", None) not in references, "cds-config must be the generated one"
    for kind, name, key in references:
        assert (kind, name) in data, f"{kind} {name} is named by a pod but not rendered"
        assert key is None or key in data[(kind, name)], f"{kind} {name} has no key {key}"


def _references(workloads: list[dict[str, Any]]) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every ConfigMap and Secret the workloads' pods read."""
    for workload in workloads:
        spec = workload["spec"]["template"]["spec"]
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                yield "ConfigMap", volume["configMap"]["name"], None
        for each in spec["containers"]:
            for source in each.get("envFrom", []):
                yield "ConfigMap", source["configMapRef"]["name"], None
            for item in each.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    yield "Secret", ref["name"], ref["key"]


# --- configuration --------------------------------------------------------------------------------


def deployed_settings() -> Settings:
    """The service's settings as the example starts it, the clients file read from deploy/."""
    env = container_env(find("Deployment", "cds-service"), "cds-service")
    mounted = clients_mount()
    assert env["CDS_CLIENTS"] == f"{mounted['mountPath']}/clients.json"
    env["CDS_CLIENTS"] = str(DEPLOY / "clients.json")
    return load_settings(env)


def clients_mount() -> dict[str, Any]:
    (mount,) = [m for m in service_container()["volumeMounts"] if m["name"] == "clients"]
    return mount


def test_the_example_configuration_passes_the_services_start_up_checks() -> None:
    """Every CDS_* variable is known and well formed (load_settings refuses the rest), and what `serve`
    checks before any worker starts holds: the clients file, the public URL, the store URLs."""
    settings = deployed_settings()
    check_configuration(settings)
    assert settings.auth == "required"
    assert settings.public_base_url, "without it tokens' aud would be checked against http://0.0.0.0:8080"
    assert settings.redis_url, "several replicas need Redis for the replay store and the run-ahead cache"
    assert settings.feedback_db.startswith("postgresql://"), "replicas must share the feedback store"


def test_no_quote_ends_up_inside_a_configured_value() -> None:
    """kustomize's env files keep quotes as part of the value: "1500" would not be a number."""
    assert not [value for value in config_env().values() if value[:1] in "\"'" or value.strip() != value]


def test_the_container_args_are_accepted_by_serve() -> None:
    """The image's ENTRYPOINT (`cds-service serve --host 0.0.0.0`) followed by the Deployment's args, parsed
    by serve's own options; the port is the one the container, the image and the probes use."""
    entrypoint = exec_form(runtime_stage(), "ENTRYPOINT")
    assert entrypoint[:2] == ["cds-service", "serve"]
    context = serving.serve.make_context("serve", [*entrypoint[2:], *service_container()["args"]])
    (port,) = service_container()["ports"]
    assert context.params["port"] == port["containerPort"]
    assert context.params["host"] == "0.0.0.0"  # noqa: S104 (the pod's address)
    expose = [rest for word, rest in runtime_stage() if word == "EXPOSE"]
    assert expose == [str(port["containerPort"])]


def test_the_probes_and_the_scrape_ask_for_routes_the_app_serves_without_a_token(tmp_path: Path) -> None:
    app = create_app(
        Settings(auth="off", feedback_db=str(tmp_path / "f.sqlite3"), state_db=str(tmp_path / "s.sqlite3"))
    )
    try:
        routes = {rule.rule for rule in app.url_map.iter_rules() if "GET" in rule.methods}
    finally:
        app.extensions["cds"]["recorder"].close()
        app.extensions["cds"]["feedback"].close()
    spec = service_container()
    (port,) = spec["ports"]
    probes = {kind: spec[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz", "liveness must not depend on Redis or PostgreSQL"
    for probe in probes.values():
        assert probe["path"] in routes and probe["path"] in UNAUTHENTICATED_PATHS
        assert probe["port"] in (port["name"], port["containerPort"])
    annotations = find("Deployment", "cds-service")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes & UNAUTHENTICATED_PATHS
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]


def test_the_readiness_probe_waits_longer_than_the_readiness_checks_do() -> None:
    """/readyz asks Redis (at most REDIS_TIMEOUT_S) and the feedback database (at most READINESS_WAIT_S); a
    kubelet that gave up first would count the probe failed without the reason /readyz gives."""
    assert service_container()["readinessProbe"]["timeoutSeconds"] > REDIS_TIMEOUT_S + READINESS_WAIT_S


# --- the file system ------------------------------------------------------------------------------


def test_everything_the_service_writes_is_on_a_writable_volume() -> None:
    """With a read-only root, each path the service writes must be under a mount that is not read-only: the
    SQLite state file, a SQLite feedback file if one is used, the metric files' parent, the image user's
    home and working directory (where relative paths land)."""
    spec = service_container()
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    env = container_env(find("Deployment", "cds-service"), "cds-service")
    settings = deployed_settings()
    written = [settings.state_db, env["PROMETHEUS_MULTIPROC_DIR"], image_home(), image_workdir()]
    if "://" not in settings.feedback_db:
        written.append(settings.feedback_db)
    writable = [m["mountPath"] for m in spec["volumeMounts"] if not m.get("readOnly")]
    for path in written:
        assert any(Path(path).is_relative_to(mount) for mount in writable), f"{path} is on the read-only root"


def image_home() -> str:
    (useradd,) = [rest for word, rest in runtime_stage() if word == "RUN" and "useradd" in rest]
    words = useradd.split()
    return words[words.index("--home-dir") + 1]


def image_workdir() -> str:
    return [rest for word, rest in runtime_stage() if word == "WORKDIR"][-1]


def test_the_pod_runs_as_the_images_user() -> None:
    """The image's files (its volume directory, 0750) belong to its user; a pod running as another would
    find them unreadable."""
    (user,) = [rest for word, rest in runtime_stage() if word == "USER"]
    uid, gid = (int(part) for part in user.split(":"))
    pod = find("Deployment", "cds-service")["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid)
    assert pod["runAsNonRoot"] is True


def test_the_clients_file_is_the_mounted_configmaps_key() -> None:
    (generator,) = [g for g in kustomization()["configMapGenerator"] if g["name"] == "cds-clients"]
    volumes = find("Deployment", "cds-service")["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == clients_mount()["name"]]
    assert volume["configMap"]["name"] == "cds-clients"
    assert Path(config_env()["CDS_CLIENTS"]).name in generator["files"]


# --- stopping, sizing, scaling --------------------------------------------------------------------


def test_the_grace_period_covers_the_pre_stop_pause_and_gunicorns_graceful_timeout() -> None:
    spec = service_container()
    command = spec["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    options = serving.gunicorn_options(deployed_settings(), "0.0.0.0:8080", 1, 4)
    needed = float(command[1]) + options["graceful_timeout"]
    grace = find("Deployment", "cds-service")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= needed + 2, f"{grace} s leaves no margin over {needed} s"


def workers_for(monkeypatch: pytest.MonkeyPatch, cpu_limit: float) -> int:
    """The workers `serve` starts under this CPU limit (the container's cgroup quota), by serve's own rule."""
    monkeypatch.setattr(serving, "available_cpus", lambda: max(1, math.ceil(cpu_limit)))
    return serving.default_workers()


def test_requests_and_limits_hold_the_workers_the_cpu_limit_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory limit holds every worker at its measured size plus the FHIR answers it may hold at once,
    the master, and the in-memory /tmp (an emptyDir in memory counts against the limit); the request holds
    the steady state. The comment in deployment.yaml names the same worker count."""
    spec = service_container()
    assert "WEB_CONCURRENCY" not in container_env(find("Deployment", "cds-service"), "cds-service")
    assert "--workers" not in spec["args"]
    limits, requests = spec["resources"]["limits"], spec["resources"]["requests"]
    workers = workers_for(monkeypatch, quantity(limits["cpu"]))
    assert f"({workers} here)" in (DEPLOY / "deployment.yaml").read_text()
    tmp = tmp_in_memory()
    steady = workers * WORKER_RSS_MIB * MIB + MASTER_RSS_MIB * MIB
    assert quantity(requests["memory"]) >= steady
    assert quantity(limits["memory"]) >= steady + workers * DEFAULT_FETCH_MEMORY_BYTES + tmp
    assert quantity(requests["cpu"]) <= quantity(limits["cpu"])


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.mark.integration
def test_the_memory_figures_the_sizing_uses_still_hold(tmp_path: Path) -> None:
    """The master and a worker of `cds-service serve`, after calls of the realistic size, stay within the
    figures the memory check above budgets (resident memory, which counts shared pages in each process,
    so the budget errs high)."""
    import requests

    served = Served(tmp_path, workers=1, CDS_NOW=HOOKS_NOW)
    try:
        body = hook_example("patient-view.json")
        for _ in range(200):
            answer = requests.post(f"{served.base}/cds-services/b12-iron-patient-view", json=body, timeout=30)
            assert answer.status_code == 200
        children = Path(f"/proc/{served.process.pid}/task/{served.process.pid}/children").read_text().split()
        (worker,) = children
        assert resident_mib(served.process.pid) <= MASTER_RSS_MIB
        assert resident_mib(int(worker)) <= WORKER_RSS_MIB
    finally:
        served.stop()


def tmp_in_memory() -> float:
    volumes = find("Deployment", "cds-service")["spec"]["template"]["spec"]["volumes"]
    (tmp,) = [v for v in volumes if v["name"] == "tmp"]
    return quantity(tmp["emptyDir"]["sizeLimit"]) if tmp["emptyDir"].get("medium") == "Memory" else 0


def test_the_autoscaler_owns_the_replica_count_of_the_deployment() -> None:
    """An HPA scales the Deployment by CPU, which the pods request; the Deployment states no count of its own
    (every `kubectl apply` would reset the HPA's to it) and the minimum is several replicas."""
    hpa, deployment = find("HorizontalPodAutoscaler", "cds-service"), find("Deployment", "cds-service")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "cds-service")
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["minReplicas"] >= 2
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Resource", "only resource metrics exist without an adapter"
        assert metric["resource"]["name"] in service_container()["resources"]["requests"]


def test_the_disruption_budget_selects_the_pods_and_lets_one_go() -> None:
    pdb, deployment = find("PodDisruptionBudget", "cds-service"), find("Deployment", "cds-service")
    assert selects(pdb["spec"]["selector"], pod_labels(deployment))
    assert pdb["spec"]["minAvailable"] < find("HorizontalPodAutoscaler", "cds-service")["spec"]["minReplicas"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1


# --- the network ----------------------------------------------------------------------------------


def policies_for(labels: dict[str, str], direction: str) -> list[dict[str, Any]]:
    return [
        doc["spec"]
        for doc in resources()
        if doc["kind"] == "NetworkPolicy"
        and selects(doc["spec"]["podSelector"], labels)
        and direction in doc["spec"]["policyTypes"]
    ]


def port_allowed(rule: dict[str, Any], port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    return ports is None or any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports)


def peer_allowed(rule: dict[str, Any], key: str, peer: dict[str, Any]) -> bool:
    """``peer``: {"pod": labels, "namespace": labels} for a pod, {"ip": address} for an outside address."""
    peers = rule.get(key)
    if peers is None:
        return True
    for each in peers:
        if "ipBlock" in each and "ip" in peer:
            if ipaddress.ip_address(peer["ip"]) in ipaddress.ip_network(each["ipBlock"]["cidr"]):
                return True
        elif "pod" in peer and "ipBlock" not in each:
            namespace = each.get("namespaceSelector")
            same_namespace = namespace is None and peer["namespace"] == {"kubernetes.io/metadata.name": "cds"}
            if (same_namespace or (namespace is not None and selects(namespace, peer["namespace"]))) and (
                selects(each.get("podSelector", {}), peer["pod"])
            ):
                return True
    return False


def egress_allowed(source: dict[str, str], peer: dict[str, Any], port: int, protocol: str = "TCP") -> bool:
    policies = policies_for(source, "Egress")
    return not policies or any(
        peer_allowed(rule, "to", peer) and port_allowed(rule, port, protocol)
        for policy in policies
        for rule in policy.get("egress", [])
    )


def ingress_allowed(target: dict[str, str], peer: dict[str, Any], port: int) -> bool:
    policies = policies_for(target, "Ingress")
    return not policies or any(
        peer_allowed(rule, "from", peer) and port_allowed(rule, port, "TCP")
        for policy in policies
        for rule in policy.get("ingress", [])
    )


def in_cds(labels: dict[str, str]) -> dict[str, Any]:
    return {"pod": labels, "namespace": {"kubernetes.io/metadata.name": "cds"}}


def store_pod(url: str) -> tuple[dict[str, str], int]:
    """The labels and container port of the pod a store URL reaches through its Service."""
    parts = urlsplit(url)
    service = find("Service", parts.hostname)
    ports = [p for p in service["spec"]["ports"] if p["port"] == url_port(url)]
    assert ports, f"Service {parts.hostname} has no port {url_port(url)}"
    workloads = [d for d in resources() if d["kind"] in ("Deployment", "StatefulSet")]
    (workload,) = [
        w for w in workloads if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(w))
    ]
    (named,) = [p for each in workload["spec"]["template"]["spec"]["containers"] for p in each["ports"]]
    assert ports[0]["targetPort"] in (named["name"], named["containerPort"])
    return pod_labels(workload), named["containerPort"]


def test_the_service_reaches_its_redis_and_postgresql_and_they_accept_only_it() -> None:
    settings = deployed_settings()
    for url in (settings.redis_url, settings.feedback_db):
        labels, port = store_pod(url)
        assert egress_allowed(SERVICE_LABELS, in_cds(labels), port), f"the service cannot reach {url}"
        assert ingress_allowed(labels, in_cds(SERVICE_LABELS), port)
        assert not ingress_allowed(labels, in_cds({"app.kubernetes.io/name": "other"}), port)


def test_the_service_resolves_names() -> None:
    dns = {"pod": {"k8s-app": "kube-dns"}, "namespace": {"kubernetes.io/metadata.name": "kube-system"}}
    for protocol in ("UDP", "TCP"):
        assert egress_allowed(SERVICE_LABELS, dns, 53, protocol)


def test_the_service_reaches_every_fhir_server_and_key_set_the_configuration_names() -> None:
    """Any outside address (NetworkPolicy cannot name hosts) on each port the clients file and
    CDS_ALLOWED_FHIR_SERVERS use: a FHIR server on 8443 would otherwise time out on every query."""
    clients = json.loads((DEPLOY / "clients.json").read_text())["clients"]
    urls = [*deployed_settings().allowed_fhir_servers]
    for client in clients:
        urls += [*client.get("fhir_servers", []), *([client["jwks_url"]] if "jwks_url" in client else [])]
    assert urls
    for url in urls:
        for address in ("203.0.113.7", "2001:db8::7"):
            assert egress_allowed(SERVICE_LABELS, {"ip": address}, url_port(url)), url
    assert not egress_allowed(SERVICE_LABELS, {"ip": "203.0.113.7"}, 25), "egress is not restricted at all"


def test_calls_and_scrapes_come_in_on_the_service_port() -> None:
    (port,) = service_container()["ports"]
    anyone = in_cds({"app.kubernetes.io/name": "ingress-nginx"})
    assert ingress_allowed(SERVICE_LABELS, anyone, port["containerPort"])
    (service_port,) = find("Service", "cds-service")["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])


def test_the_store_urls_carry_the_passwords_the_stores_are_given() -> None:
    """Each password appears twice, once for the store and once in the service's URL of it (percent-decoded,
    as the clients decode it): a rotation that changes one and not the other locks the service out."""
    settings = deployed_settings()
    redis_env = container_env(find("Deployment", "cds-redis"), "redis")
    postgres_env = container_env(find("StatefulSet", "cds-postgres"), "postgres")
    assert unquote(urlsplit(settings.redis_url).password or "") == redis_env["REDIS_PASSWORD"]
    feedback = urlsplit(settings.feedback_db)
    assert unquote(feedback.password or "") == postgres_env["SERVICE_DB_PASSWORD"]
    assert feedback.path.lstrip("/") == postgres_env["POSTGRES_DB"]
    assert feedback.username != postgres_env["POSTGRES_USER"], "the service must not log in as the superuser"

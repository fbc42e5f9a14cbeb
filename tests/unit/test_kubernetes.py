"""kubernetes/ stays deployable without a cluster here: every overlay renders with
kubectl's kustomize, every object passes the Kubernetes schemas, and what the pods set
and call is what sllm reads and serves (settings, ports, probes, drain)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sllm.config import HeadSettings, KeySettings, WorkerSettings
from sllm.kv.redis_url import check_redis_url, is_sentinel

KUBERNETES = Path(__file__).resolve().parents[2] / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir())
SCHEMA_VERSION = "1.32.0"
# What each image runs (docker/*.Dockerfile) and the settings it reads.
ROLES = {
    "sllm-head": ("head", HeadSettings),
    "sllm-worker-cpu": ("worker", WorkerSettings),
    "sllm-worker-cuda": ("worker", WorkerSettings),
}
SECRET_KEYS = {"SLLM_CLUSTER_TOKEN", "SLLM_ADMIN_KEY", "SLLM_API_KEYS"}

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed (Debian: kubernetes-client)"
)


def render(overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def env_of(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment: its env (secrets as their key names) over the
    ConfigMaps it takes whole."""
    config_maps = by_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for var in container.get("env", []):
        secret = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = f"<secret {secret['key']}>" if secret else str(var.get("value", ""))
    return env


def sllm_containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) of every sllm container."""
    out = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["image"].split(":")[0] in ROLES:
                    out.append((doc, container))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_passes_the_kubernetes_schemas(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "DaemonSet", "StatefulSet", "Service"} <= kinds
    assert {"PodDisruptionBudget", "ConfigMap", "NetworkPolicy", "Namespace"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "sllm", doc["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pods_set_what_sllm_reads_and_probe_what_it_serves(overlay: str) -> None:
    docs = render(overlay)
    roles = set()
    for workload, container in sllm_containers(docs):
        role, settings = ROLES[container["image"].split(":")[0]]
        roles.add(role)
        assert container.get("args", [role]) == [role]
        env = env_of(container, docs)
        known = {f"SLLM_{name.upper()}" for name in settings.model_fields}
        known |= {f"SLLM_{name.upper()}" for name in KeySettings.model_fields}
        unknown = {name for name in env if name.startswith("SLLM_")} - known
        assert not unknown, f"{workload['metadata']['name']} sets settings sllm lacks: {unknown}"
        # Values sllm would refuse are refused here, not at the pod's start.
        plain = {k: v for k, v in env.items() if k.startswith("SLLM_") and "$(" not in v}
        settings.model_validate(
            {k.removeprefix("SLLM_").lower(): v for k, v in plain.items() if "<secret" not in v}
        )
        assert is_sentinel(check_redis_url(env["SLLM_REDIS_URL"]))
        secrets = {v[len("<secret ") : -1] for v in env.values() if v.startswith("<secret ")}
        assert "SLLM_CLUSTER_TOKEN" in secrets and secrets <= SECRET_KEYS
        # The port it listens on is the one it exposes, probes and is called on.
        port = int(env.get("SLLM_PORT", settings.model_fields["port"].default))
        (exposed,) = container["ports"]
        assert exposed["containerPort"] == port
        for probe in ("readinessProbe", "livenessProbe"):
            check = container[probe]
            target = check.get("httpGet") or check["tcpSocket"]
            assert target["port"] in (port, exposed["name"])
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        pod = workload["spec"]["template"]["spec"]
        if role == "worker":
            assert env["SLLM_ADVERTISE_URL"] == f"http://$(POD_IP):{port}"
            assert env["SLLM_HEAD_URL"] == "http://sllm-head:8343"
            # The grace period covers the drain, and the backends' stop after it.
            assert pod["terminationGracePeriodSeconds"] >= float(env["SLLM_DRAIN_TIMEOUT"]) + 30
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert mounts["models"] == env["SLLM_STORAGE_PATH"]
            assert "hostPath" in volumes["models"]  # the node's local disk
    assert roles == {"head", "worker"}
    heads = by_kind(docs, "Deployment")["sllm-head"]
    assert heads["spec"]["replicas"] >= 2
    service = by_kind(docs, "Service")["sllm-head"]
    assert service["spec"]["ports"][0]["port"] == HeadSettings.model_fields["port"].default
    labels = heads["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_cover_every_workload(overlay: str) -> None:
    docs = render(overlay)
    budgets = list(by_kind(docs, "PodDisruptionBudget").values())
    for doc in docs:
        if doc["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert any(
                b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets
            ), doc["metadata"]["name"]


def test_gpu_workers_ask_for_gpus_on_labelled_nodes_and_cpu_workers_do_not() -> None:
    workers = {
        overlay: by_kind(render(overlay), "DaemonSet")["sllm-worker"] for overlay in OVERLAYS
    }
    assert set(workers) == {"cpu", "gpu"}
    gpu = workers["gpu"]["spec"]["template"]["spec"]
    assert gpu["nodeSelector"] == {"sllm.io/worker": "gpu"}
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert gpu["containers"][0]["image"].startswith("sllm-worker-cuda:")
    cpu = workers["cpu"]["spec"]["template"]["spec"]
    assert cpu["nodeSelector"] == {"sllm.io/worker": "cpu"}
    assert "nvidia.com/gpu" not in str(cpu["containers"][0]["resources"])
    assert cpu["containers"][0]["image"].startswith("sllm-worker-cpu:")


def test_the_redis_scripts_are_valid_shell() -> None:
    (scripts,) = [d for d in render("cpu") if d["metadata"]["name"] == "redis-scripts"]
    for name, text in scripts["data"].items():
        done = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, (name, done.stderr)

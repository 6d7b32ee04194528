"""deploy/: the compose file and the Kubernetes manifests, checked offline (no cluster or Docker here).

Core objects are validated against the Kubernetes 1.37 schemas shipped with `kubernetes-validate` (strict: unknown
fields fail); the KEDA ScaledObject (a CRD, no schema there) gets a structure check; names and settings that must
agree across files (service names, the queue, probe paths the app serves) are checked against each other.
"""
from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from jobs.settings import JobSettings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSION = "1.37.0"


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if doc]


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
            for doc in documents(path.name) if doc["kind"] == kind}


@pytest.mark.parametrize("name", ["api.yaml", "worker.yaml", "redis.yaml"])
def test_core_manifests_are_valid_kubernetes(name):
    for doc in documents(name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_caught():
    doc = documents("api.yaml")[0]
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_api_probes_use_routes_the_app_serves(app):
    container = by_kind("Deployment")["tomato-api"]["spec"]["template"]["spec"]["containers"][0]
    served = {rule.rule for rule in app.url_map.iter_rules()}
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/livez", "/readyz"} <= served
    hpa = by_kind("HorizontalPodAutoscaler")["tomato-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tomato-api" and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_keda_scales_the_workers_on_the_job_queue():
    (scaled,) = documents("keda-scaledobject.yaml")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    spec = scaled["spec"]
    worker = by_kind("Deployment")[spec["scaleTargetRef"]["name"]]
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "jobs.worker"]
    env = {item["name"]: item["value"] for item in container["env"]}
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == env["TOMATO_JOBS_QUEUE"] == JobSettings().queue
    assert int(trigger["metadata"]["listLength"]) > 0 and spec["minReplicaCount"] >= 1
    redis_service = by_kind("Service")["tomato-redis"]
    assert trigger["metadata"]["address"] == f"tomato-redis:{redis_service['spec']['ports'][0]['port']}"
    assert env["TOMATO_JOBS_REDIS_URL"].startswith("redis://tomato-redis:6379/")
    assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod",
                         "triggers", "advanced", "fallback", "idleReplicaCount"}


def test_compose_runs_redis_api_and_scalable_workers():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]  # --scale needs both
    for name in ("api", "worker"):
        assert services[name]["environment"]["TOMATO_JOBS_REDIS_URL"] == "redis://redis:6379/0"
        assert (DEPLOY.parent / services[name]["build"]["context"].replace("..", ".") / "deploy" / "Dockerfile").exists()
    assert services["worker"]["command"][:3] == ["python", "-m", "jobs.worker"]
    assert "--appendonly" in services["redis"]["command"]

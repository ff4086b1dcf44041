"""The Kubernetes manifests validate against the Kubernetes schemas (kubernetes-validate, offline)."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

MANIFESTS = sorted((Path(__file__).resolve().parents[1] / "deploy" / "kubernetes").glob("*.yaml"))
K8S_VERSION = "1.37.0"


def test_there_are_cpu_and_gpu_deployments_a_service_each_and_an_autoscaler():
    kinds = [yaml.safe_load(p.read_text())["kind"] for p in MANIFESTS]
    assert sorted(kinds) == ["Deployment", "Deployment", "HorizontalPodAutoscaler", "Service", "Service"]


def test_each_service_selects_the_pods_of_exactly_one_deployment():
    docs = [yaml.safe_load(p.read_text()) for p in MANIFESTS]
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] == "Deployment"}
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        chosen = [name for name, labels in pods.items() if selector <= labels.items()]
        assert chosen == [service["metadata"]["name"]], (service["metadata"]["name"], chosen)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid(path):
    doc = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_deployments_probe_the_service_health_routes():
    for path in MANIFESTS:
        doc = yaml.safe_load(path.read_text())
        if doc["kind"] != "Deployment":
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["resources"]["requests"]["cpu"]
    gpu = yaml.safe_load((MANIFESTS[0].parent / "deployment-gpu.yaml").read_text())
    assert gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_a_stopping_pod_drains_within_its_grace_period():
    for kind in ("cpu", "gpu"):
        pod = yaml.safe_load((MANIFESTS[0].parent / f"deployment-{kind}.yaml").read_text())["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: float(e["value"]) for e in container["env"] if e["name"].startswith("CAPSNET_DRAIN")}
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop + env["CAPSNET_DRAIN_SECONDS"] + env["CAPSNET_DRAIN_TIMEOUT"] < pod["terminationGracePeriodSeconds"]
        assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
        assert container["readinessProbe"]["periodSeconds"] < env["CAPSNET_DRAIN_SECONDS"]  # noticed within the window


def test_the_deployments_name_the_images_that_make_container_tags():
    build = (MANIFESTS[0].parents[1] / "container" / "build.sh").read_text()
    assert "IMAGE=${IMAGE:-capsnet:$KIND}" in build
    for kind in ("cpu", "gpu"):
        doc = yaml.safe_load((MANIFESTS[0].parent / f"deployment-{kind}.yaml").read_text())
        container = doc["spec"]["template"]["spec"]["containers"][0]
        assert (container["image"], container["imagePullPolicy"]) == (f"capsnet:{kind}", "IfNotPresent")

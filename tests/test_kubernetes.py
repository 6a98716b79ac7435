"""deploy/k8s: valid against the Kubernetes schemas, and consistent with the image and with yoso's settings."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest

from tests.deploy_files import (
    DEPLOYMENT_GUIDE, ENV_PREFIX, K8S_DIR, dockerfile_arguments, load_yaml_documents, set_to_their_default,
    settings_from,
)
from tests.support import ROOT
from yoso import __version__

# The oldest Kubernetes the schemas ship (autoscaling/v2 and policy/v1 are GA there) and the newest.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
MANIFESTS = sorted(K8S_DIR.glob("*.yaml"))


def resources() -> dict[str, dict]:
    return {doc["kind"]: doc for path in MANIFESTS for doc in load_yaml_documents(path)}


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    found = resources()
    assert set(found) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    return found


@pytest.fixture(scope="module")
def pod(manifests) -> dict:
    return manifests["Deployment"]["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    (only,) = pod["spec"]["containers"]
    return only


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifests_are_valid_kubernetes(path, version):
    for document in load_yaml_documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_probes_use_readyz_for_readiness_and_healthz_for_liveness(container):
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert port_names[container[probe]["httpGet"]["port"]] == 8000


def test_workers_match_the_cpu_limit_and_requests_fit_the_limits(container):
    resources = container["resources"]
    assert int(env_of(container)["YOSO_WORKERS"]) == cpu_cores(resources["limits"]["cpu"])
    assert cpu_cores(resources["requests"]["cpu"]) <= cpu_cores(resources["limits"]["cpu"])
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_every_yoso_variable_is_a_valid_setting(container):
    variables = env_of(container)
    assert all(name.startswith(ENV_PREFIX) for name in variables)
    settings = settings_from(variables)
    assert settings.port == container["ports"][0]["containerPort"]


def test_the_pod_sets_only_what_differs_from_the_defaults_and_pins_its_workers(container):
    """YOSO_WORKERS is set even where it equals the default (the CPU limit yoso reads from its cgroup): the
    memory limit is sized for this many workers, so the manifest states the number beside it."""
    assert set_to_their_default(env_of(container)) in ([], ["YOSO_WORKERS"])
    assert "YOSO_WORKERS" in env_of(container)


def test_shutdown_drains_before_the_kubelet_kills(pod, container):
    grace = settings_from(env_of(container)).shutdown_grace_s
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace


def test_only_the_yoso_scrape_job_selects_the_pods(pod):
    """prometheus/conf_dir/kubernetes.yml keeps the pods by label and port name (tests/test_prometheus.py runs
    it through Prometheus); prometheus.io annotations would have a generic kubernetes-pods job scrape every
    pod a second time and double every rate."""
    assert not [key for key in pod["metadata"].get("annotations", {}) if key.startswith("prometheus.io/")]


def test_service_hpa_and_budget_select_the_deployment_pods(manifests, pod, container):
    labels = pod["metadata"]["labels"]
    deployment = manifests["Deployment"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = manifests["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert {port["targetPort"] for port in service["ports"]} <= {port["name"] for port in container["ports"]}
    target = manifests["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert manifests["PodDisruptionBudget"]["spec"]["minAvailable"] < hpa["minReplicas"] <= hpa["maxReplicas"]


def test_pods_run_the_image_the_dockerfile_builds_as_its_user(pod, container):
    assert container["image"] == f"yoso-server:{__version__}"
    uid = re.match(r"\d+", dockerfile_arguments("USER")[-1]).group()
    assert pod["spec"]["securityContext"]["runAsUser"] == int(uid)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_guide_builds_the_image_the_pods_run_and_applies_the_manifests(container):
    deploy = DEPLOYMENT_GUIDE.read_text()
    assert f"docker build -t {container['image']} ." in deploy
    assert f"kubectl apply -f {K8S_DIR.relative_to(ROOT)}/" in deploy

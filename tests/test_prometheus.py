"""Prometheus and Grafana as code, checked with the real tools.

Debian's `prometheus` package provides the real server and promtool (`make test` installs it). The server
is started on a loopback port with the shipped scrape job and alert rules, scraping a real yoso every
second; every PromQL expression of the Grafana board and of the alert rules is then evaluated through
Prometheus' HTTP API. No Grafana or Docker engine runs here: the board, provisioning files and launch
scripts are checked for what Grafana and `docker run` rely on.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy_files import K8S_DIR, load_yaml_documents
from tests.support import ROOT, LiveServer, eventually, free_port, image_bytes

PROMETHEUS = ROOT / "prometheus"
CONF_DIR = PROMETHEUS / "conf_dir"
RULES = CONF_DIR / "rules.yml"
GRAFANA = ROOT / "grafana"
BOARD = GRAFANA / "boards" / "example.json"
# What Grafana substitutes before a query reaches Prometheus; the tests scrape every second.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60)


def board_queries() -> list[tuple[str, str]]:
    board = json.loads(BOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


def rule_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def as_prometheus_sees_it(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def test_promtool_accepts_the_scrape_config_and_the_rules():
    config = promtool("check", "config", CONF_DIR / "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", RULES)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in rules.stdout


def test_each_alert_fires_on_its_series_and_a_healthy_replica_raises_none():
    result = promtool("test", "rules", PROMETHEUS / "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "rules_test.yml").read_text()))
    assert tested == {name for name, _ in rule_expressions()}


def test_the_board_covers_what_an_operator_watches():
    titles = " ".join(title for title, _ in board_queries()).lower()
    for topic in ("requests per second by endpoint", "latency", "inference seconds by model", "detections",
                  "null-prediction ratio", "error ratio", "in flight", "models loaded",
                  "refused requests per second by reason", "queue wait", "expected task seconds", "workers replaced",
                  "model steps"):
        assert topic in titles
    latency = [expr for title, expr in board_queries() if title.startswith("Latency")]
    assert [re.match(r"histogram_quantile\((0\.\d+)", expr).group(1) for expr in latency] == ["0.5", "0.95", "0.99"]


def test_grafana_provisioning_points_at_the_board_and_its_datasource():
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = datasource["datasources"]
    board = json.loads(BOARD.read_text())
    uids = {panel["datasource"]["uid"] for panel in board["panels"]}
    uids |= {target["datasource"]["uid"] for panel in board["panels"] for target in panel["targets"]}
    assert uids == {source["uid"]} and source["type"] == "prometheus"
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "yoso.yml").read_text())["providers"]
    mounts = dict(launch_script_mounts(GRAFANA / "launch.sh"))
    assert mounts[provider["options"]["path"]] == GRAFANA / "boards"
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"


def launch_script_mounts(script: Path) -> list[tuple[str, Path]]:
    """(container path, repository path) for every `--volume "$here/...:..."` of a launch script."""
    found = re.findall(r'--volume "\$here/([^:"]+):([^:"]+)(?::ro)?"', script.read_text())
    return [(inside, script.parent / outside) for outside, inside in found]


@pytest.mark.parametrize("script", [PROMETHEUS / "launch.sh", GRAFANA / "launch.sh"], ids=lambda p: p.parent.name)
def test_launch_scripts_are_valid_bash_run_a_pinned_official_image_and_mount_existing_paths(script):
    """No Docker engine runs here: the scripts are checked statically."""
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert script.stat().st_mode & 0o111, "not executable"
    text = script.read_text()
    assert "docker run" in text
    image = re.search(r"^\s*((?:prom|grafana)/[\w-]+):(\S+)", text, re.MULTILINE)
    assert image and image.group(2) not in ("latest", "main"), "the image tag must be pinned"
    mounts = launch_script_mounts(script)
    assert mounts
    for _, path in mounts:
        assert path.exists(), path


def test_the_scrape_target_is_yoso_on_its_default_port():
    config = yaml.safe_load((CONF_DIR / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "yoso" and job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["yoso-server:8000"]
    assert "--add-host yoso-server:host-gateway" in (PROMETHEUS / "launch.sh").read_text()


@contextmanager
def running_prometheus(config: dict, workdir: Path) -> Iterator[str]:
    """The real Prometheus on a loopback port with `config` (rules files resolved in conf_dir), every second."""
    assert shutil.which("prometheus"), "Debian's prometheus package is missing: run `make system-deps`"
    config = {**config, "global": {**config.get("global", {}), "scrape_interval": "1s", "evaluation_interval": "1s"}}
    config["rule_files"] = [str(CONF_DIR / name) for name in config.get("rule_files", [])]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, (workdir / "prometheus.log").read_text()
        try:
            return httpx.get(url + "/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        assert eventually(ready, timeout_s=60), "Prometheus did not become ready"
        yield url
    finally:
        process.terminate()
        process.wait(20)
        log.close()


@pytest.fixture(scope="module")
def prometheus(server: LiveServer, tmp_path_factory) -> Iterator[str]:
    """The shipped job and rules, scraping the session's yoso."""
    config = yaml.safe_load((CONF_DIR / "prometheus.yml").read_text())
    config["scrape_configs"][0]["static_configs"] = [{"targets": [server.url.removeprefix("http://")]}]
    with running_prometheus(config, tmp_path_factory.mktemp("prometheus")) as url:
        yield url


def query(prometheus: str, expr: str) -> dict:
    response = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}\n{body}"
    return body["data"]


def has_a_number(result: dict) -> bool:
    """A query answers with data, not only NaN (a quantile of a histogram that did not move in the window)."""
    return any(not math.isnan(float(series["value"][1])) for series in result["result"])


def send_traffic(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        for model in ("yolov3-tiny", "yolov4-tiny"):
            for endpoint in ("predict", "detect", "count_objects"):
                http.post(f"/{endpoint}", params={"model": model}, files={"file": ("f.jpg", image_bytes("fruits.jpg"))})
        http.post("/detect", params={"confidence": 0.999}, files={"file": ("c.jpg", image_bytes("clock.jpg"))})
        http.post("/detect", params={"model": "no-such-model"}, files={"file": ("c.jpg", image_bytes("clock.jpg"))})


def last_scrape(prometheus: str) -> float:
    """When Prometheus last scraped yoso (Unix seconds; 0 before the first scrape)."""
    result = query(prometheus, 'timestamp(up{job="yoso"})')["result"]
    return max((float(series["value"][1]) for series in result), default=0.0)


def test_every_dashboard_query_returns_data_and_every_alert_rule_evaluates(prometheus, server):
    queries = [(title, as_prometheus_sees_it(expr)) for title, expr in board_queries()]
    without_data = queries
    deadline = time.monotonic() + 90
    while without_data and time.monotonic() < deadline:  # a rate needs a scrape on each side of the traffic
        send_traffic(server.url)
        sent = time.time()
        assert eventually(lambda: last_scrape(prometheus) > sent, timeout_s=30), "Prometheus stopped scraping yoso"
        without_data = [(title, expr) for title, expr in queries if not has_a_number(query(prometheus, expr))]
    assert not without_data, f"dashboard queries without data (or only NaN): {without_data}"

    for name, expr in rule_expressions():
        assert query(prometheus, expr)["resultType"] == "vector", name
    rules = httpx.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"][0]["rules"]
    assert {rule["name"] for rule in rules} == {name for name, _ in rule_expressions()}
    assert eventually_evaluated(prometheus)
    targets = httpx.get(prometheus + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert [(t["labels"]["job"], t["health"]) for t in targets] == [("yoso", "up")]
    assert query(prometheus, 'ALERTS{alertname="YosoTargetDown"}')["result"] == []


def eventually_evaluated(prometheus: str) -> bool:
    """Every rule has been evaluated by the rule manager, without error."""
    def evaluated() -> bool:
        rules = httpx.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"][0]["rules"]
        return all(rule["health"] == "ok" and not rule.get("lastError") for rule in rules)

    return eventually(evaluated, timeout_s=30)


def discovered_pod_target(address: str, pod: dict, port_name: str, name: str) -> dict:
    """A static target with the labels Kubernetes pod discovery gives one container port of `pod`."""
    labels = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', key)}": value
              for key, value in pod["metadata"]["labels"].items()}
    labels.update(__meta_kubernetes_pod_container_port_name=port_name, __meta_kubernetes_namespace="default",
                  __meta_kubernetes_pod_name=name)
    return {"targets": [address], "labels": labels}


def test_the_kubernetes_job_scrapes_the_deployment_pods_on_their_http_port_as_job_yoso(server, tmp_path):
    """Debian's Prometheus is built without Kubernetes discovery: the shipped job gets static targets carrying
    the labels pod discovery would give them, and Prometheus' own relabelling decides which it scrapes."""
    config = yaml.safe_load((CONF_DIR / "kubernetes.yml").read_text())
    [job] = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    [deployment] = load_yaml_documents(K8S_DIR / "deployment.yaml")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert [port["name"] for port in container["ports"]] == ["http", "grpc"]  # /metrics is on http
    other_app = {"metadata": {"labels": {**pod["metadata"]["labels"], "app.kubernetes.io/name": "other"}}}
    job["static_configs"] = [
        discovered_pod_target(server.url.removeprefix("http://"), pod, "http", "yoso-server-1"),
        discovered_pod_target("127.0.0.1:1", pod, "grpc", "yoso-server-1"),  # another port of the same pod
        discovered_pod_target("127.0.0.1:2", other_app, "http", "other-1"),
    ]
    with running_prometheus(config, tmp_path) as prometheus:
        assert eventually(lambda: query(prometheus, 'up{job="yoso"} == 1')["result"], timeout_s=30), (
            "the yoso pod was never scraped")
        targets = httpx.get(prometheus + "/api/v1/targets", timeout=10).json()["data"]
        [active] = targets["activeTargets"]
        assert (active["labels"]["job"], active["labels"]["namespace"], active["labels"]["pod"]) == (
            "yoso", "default", "yoso-server-1")
        assert len(targets["droppedTargets"]) == 2
        # The alert rules select job="yoso": on this job they see the pod.
        assert query(prometheus, 'max by (instance) (yoso_model_loaded_workers{job="yoso"})')["result"]

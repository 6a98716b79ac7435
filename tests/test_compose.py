"""compose/stage, read statically (no Docker engine here): the services, their wiring, and that every file
they mount and every YOSO_ variable they set is one the repository and yoso actually have."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy_files import (
    COMPOSE_DIR, DEPLOYMENT_GUIDE, ENV_PREFIX, load_yaml_documents, read_env_file, set_to_their_default,
    settings_from,
)
from tests.support import ROOT

COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
PUBLISHED = {"yoso-server": 8000, "prometheus": 9090, "grafana": 3000, "zipkin": 9411}


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    (compose,) = load_yaml_documents(COMPOSE_FILE)
    return compose["services"]


def mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path, for the bind mounts (host paths are relative to the compose file)."""
    found = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        found[container] = (COMPOSE_DIR / host).resolve()
    return found


def host_path(service: dict, container_path: str) -> Path:
    """Where a path inside the container comes from on the host, through the longest mount above it."""
    for mounted, host in sorted(mounts(service).items(), key=lambda item: -len(item[0])):
        if container_path == mounted or container_path.startswith(mounted.rstrip("/") + "/"):
            return host / container_path[len(mounted):].lstrip("/")
    raise AssertionError(f"{container_path} is not mounted")


def environment(service: dict) -> dict[str, str]:
    variables = {}
    env_files = service.get("env_file", [])
    for env_file in [env_files] if isinstance(env_files, str) else env_files:
        variables.update(read_env_file(COMPOSE_DIR / env_file))
    declared = service.get("environment", {})
    if isinstance(declared, list):
        declared = dict(item.split("=", 1) for item in declared)
    variables.update({name: str(value) for name, value in declared.items()})
    return variables


def test_the_stage_runs_yoso_prometheus_grafana_and_zipkin_on_their_usual_ports(services):
    assert set(services) == set(PUBLISHED)
    for name, port in PUBLISHED.items():
        assert f"{port}:{port}" in services[name]["ports"], name


def test_every_service_has_a_healthcheck_and_every_dependency_a_condition(services):
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services
            assert spec["condition"] in {"service_healthy", "service_started"}
    assert services["yoso-server"]["depends_on"]["zipkin"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert "depends_on" not in services["prometheus"]  # a scrape before yoso answers just fails; no need to wait


def test_every_mounted_path_and_env_file_exists_in_the_repository(services):
    for name, service in services.items():
        for host in mounts(service).values():
            assert host.exists() and ROOT in host.parents, f"{name}: {host}"
        for env_file in [service["env_file"]] if "env_file" in service else []:
            assert (COMPOSE_DIR / env_file).is_file()
    context = (COMPOSE_DIR / services["yoso-server"]["build"]["context"]).resolve()
    assert context == ROOT and (context / "Dockerfile").is_file()


def test_every_yoso_variable_set_is_a_setting_yoso_reads(services):
    for name, service in services.items():
        variables = {key: value for key, value in environment(service).items() if key.startswith(ENV_PREFIX)}
        if name != "yoso-server":
            assert not variables, name
    yoso = environment(services["yoso-server"])
    assert all(key.startswith(ENV_PREFIX) for key in yoso)
    settings = settings_from(yoso)
    assert settings.prometheus_metrics and settings.otel_instrument
    assert settings.otel_instrument_exporter.value == "zipkin"
    assert settings.port == PUBLISHED["yoso-server"]


def test_the_env_file_sets_only_what_differs_from_the_defaults(services):
    assert set_to_their_default(environment(services["yoso-server"])) == []


def test_yoso_traces_to_the_zipkin_service(services):
    endpoint = urlsplit(settings_from(environment(services["yoso-server"])).zipkin_endpoint)
    assert (endpoint.hostname, endpoint.port, endpoint.path) == ("zipkin", PUBLISHED["zipkin"], "/api/v2/spans")


def test_yoso_healthcheck_waits_for_readiness_on_the_configured_port(services):
    command = services["yoso-server"]["healthcheck"]["test"]
    url = re.search(r"'(http://[^']+)'", command[-1]).group(1)
    port = settings_from(environment(services["yoso-server"])).port
    assert url == f"http://127.0.0.1:{port}/readyz"


def test_prometheus_scrapes_the_yoso_service_with_its_rules_mounted(services):
    prometheus = services["prometheus"]
    config_path = re.search(r"--config\.file=(\S+)", " ".join(prometheus["command"])).group(1)
    config = yaml.safe_load(host_path(prometheus, config_path).read_text())
    targets = {target for job in config["scrape_configs"] for static in job.get("static_configs", [])
               for target in static["targets"]}
    assert f"yoso-server:{PUBLISHED['yoso-server']}" in targets
    for rule_file in config.get("rule_files", []):
        in_container = rule_file if rule_file.startswith("/") else str(Path(config_path).parent / rule_file)
        assert host_path(prometheus, in_container).is_file(), rule_file


def test_grafana_reads_the_prometheus_service_and_the_mounted_boards(services):
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    datasources = [source for path in sorted((provisioning / "datasources").glob("*.y*ml"))
                   for source in yaml.safe_load(path.read_text())["datasources"]]
    urls = {urlsplit(source["url"]) for source in datasources if source["type"] == "prometheus"}
    assert ("prometheus", PUBLISHED["prometheus"]) in {(url.hostname, url.port) for url in urls}
    providers = [provider for path in sorted((provisioning / "dashboards").glob("*.y*ml"))
                 for provider in yaml.safe_load(path.read_text())["providers"]]
    assert providers
    for provider in providers:
        assert list(host_path(grafana, provider["options"]["path"]).glob("*.json")), provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file()
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"


def test_the_stage_runs_the_same_images_as_the_launch_scripts(services):
    for name, script in {"prometheus": "prometheus/launch.sh", "grafana": "grafana/launch.sh"}.items():
        assert services[name]["image"] in (ROOT / script).read_text().split(), name


def test_the_guide_starts_the_stage_and_lists_its_urls(services):
    deploy = DEPLOYMENT_GUIDE.read_text()
    assert f"docker compose -f {COMPOSE_FILE.relative_to(ROOT)} up" in deploy
    for port in PUBLISHED.values():
        assert f"http://localhost:{port}" in deploy

"""docker-compose.kafka.yml against the Compose Specification and against the code.

No Docker engine runs here, so the file is checked, not run: the schema, then that every
command parses with the real CLI, every SKYLOOP_* variable is a setting with a valid value,
the ports agree between services, Prometheus and the settings, and the init job really
creates the code's topics and tables.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from processors.cli import WORKER_NAMES, build_parser
from processors.core.config import FLAT_FIELDS, Settings
from tests.conftest import REPO_ROOT

jsonschema = pytest.importorskip("jsonschema")

COMPOSE = REPO_ROOT / "docker-compose.kafka.yml"
SPEC = REPO_ROOT.parent / "shared" / "specs" / "compose-spec.json"
PROMETHEUS = REPO_ROOT / "infra" / "prometheus" / "prometheus.yml"
DOCKERFILE = REPO_ROOT / "infra" / "docker" / "Dockerfile"
# variables read outside Settings (by the CLI itself)
CLI_VARIABLES = {"SKYLOOP_CONFIG", "SKYLOOP_LOG_LEVEL"}
INFRA_SERVICES = {"kafka", "clickhouse", "prometheus", "alertmanager", "grafana", "init"}
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?])?([^}]*)\}")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the default, ``${VAR:?msg}`` with a placeholder."""

    def one(match: re.Match[str]) -> str:
        text = match.group(0)
        return "placeholder" if ":?" in text else match.group(2)

    return _INTERPOLATION.sub(one, value)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    return [_interpolate(str(part)) for part in service["command"]]


def test_valid_against_the_compose_specification() -> None:
    if not SPEC.is_file():
        pytest.skip(f"needs the Compose Specification schema at {SPEC}")
    schema = json.loads(SPEC.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_one_service_per_processor_running_its_worker() -> None:
    services = _compose()["services"]
    assert set(services) == INFRA_SERVICES | set(WORKER_NAMES)
    parser = build_parser()
    for name in WORKER_NAMES:
        command = _command(services[name])
        assert command[:2] == ["worker", name]
        args = parser.parse_args(command)
        assert args.name == name
        assert services[name]["restart"] == "on-failure"
        assert services[name]["depends_on"]["init"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[name]["build"]["dockerfile"] == "infra/docker/Dockerfile"
    init = parser.parse_args(_command(services["init"]))
    assert init.command == "init" and init.wait > 0


def test_scorers_scale_without_colliding() -> None:
    score = _compose()["services"]["score"]
    # --scale score=N needs no fixed container name and no host port per replica
    assert "container_name" not in score
    assert "ports" not in score


def test_every_skyloop_variable_is_a_setting_with_a_valid_value() -> None:
    services = _compose()["services"]
    for name in (*WORKER_NAMES, "init"):
        env = _env(services[name])
        keys = {k for k in env if k.startswith("SKYLOOP_")}
        unknown = {
            k
            for k in keys - CLI_VARIABLES
            if k.removeprefix("SKYLOOP_").lower() not in {*Settings.model_fields, *FLAT_FIELDS}
        }
        assert not unknown, f"{name}: not settings: {sorted(unknown)}"
        values = {
            k.removeprefix("SKYLOOP_").lower(): v
            for k, v in env.items()
            if k in keys - CLI_VARIABLES
        }
        settings = Settings(**values)  # raises if a value is invalid
        assert settings.kafka.bootstrap_servers == "kafka:9092"
        assert settings.resolved_clickhouse_dsn.startswith("http://clickhouse:8123/")
        assert settings.metrics.host == "0.0.0.0"


def test_ports_agree_between_services_prometheus_and_settings() -> None:
    compose = _compose()
    services = compose["services"]
    kafka_env = _env(services["kafka"])
    listeners = kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    for name in (*WORKER_NAMES, "init"):
        env = _env(services[name])
        assert f"PLAINTEXT://{env['SKYLOOP_BOOTSTRAP_SERVERS']}" in listeners
        host_port = env["SKYLOOP_CLICKHOUSE_DSN"].split("//")[1].split("/")[0]
        assert host_port == "clickhouse:8123"
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"

    prometheus = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "skyloop"]
    (dns,) = job["dns_sd_configs"]
    assert set(dns["names"]) == set(WORKER_NAMES)
    for name in WORKER_NAMES:
        port = int(_env(services[name])["SKYLOOP_METRICS_PORT"])
        assert port == dns["port"]
        assert str(port) in [str(p) for p in services[name]["expose"]]
    (am,) = prometheus["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert any(p.endswith(":9093") for p in services["alertmanager"]["ports"])
    assert prometheus["rule_files"] == ["rules/*.yml"]


def test_mounted_configuration_lives_in_the_repository() -> None:
    services = _compose()["services"]
    mounts = [
        v.split(":")[0]
        for name in ("prometheus", "alertmanager", "grafana")
        for v in services[name]["volumes"]
        if v.startswith("./")
    ]
    assert "./infra/prometheus" in mounts
    assert "./infra/grafana/provisioning" in mounts
    assert "./infra/grafana/dashboards" in mounts
    assert (REPO_ROOT / "infra" / "prometheus" / "prometheus.yml").is_file()


def test_dockerfile_builds_cpu_or_cuda_as_a_non_root_user_without_secrets() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert "cuda)" in text and "cpu)" in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    for line in re.findall(r"^(?:ENV|ARG)\b.*$", text, re.M):
        assert not re.search(r"PASSWORD|SECRET|TOKEN", line, re.I), line
    # what the code reads beside the package must be in the image
    for path in ("processors/", "schemas/", "infra/clickhouse/"):
        assert f"COPY {path}" in text
    assert re.search(r'^ENTRYPOINT \["skyloop"\]$', text, re.M)
    assert "SKYLOOP_METRICS_HOST=0.0.0.0" in text

"""Prometheus alert rules: valid, unit-tested with promtool, over metrics the code exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from processors.core.metrics import REGISTRY

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO_ROOT / "infra" / "prometheus"
RULES = PROMETHEUS / "rules" / "skyloop.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (Debian package prometheus)"
)
# Metrics Prometheus itself or the client library's process collector provide.
EXTERNAL_METRICS = {"up"}
_METRIC_NAME = re.compile(r"\b((?:skyloop|process)_[a-z0-9_]+)")
_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def _exported_names() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(family.name + s for s in _SUFFIXES)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_every_rule_uses_metrics_the_code_exports() -> None:
    exported = _exported_names()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["alert"] for r in rules if "alert" in r} >= {
        "SkyloopProcessorDown",
        "SkyloopDeadLetterRateHigh",
        "SkyloopBatchLatencyHigh",
        "SkyloopConsumerLagGrowing",
        "SkyloopDriftStorm",
        "SkyloopNoCandidates",
        "SkyloopFlagRateOffTarget",
        "SkyloopModelRolledBack",
        "SkyloopPipelinePaused",
    }
    for rule in rules:
        used = set(_METRIC_NAME.findall(rule["expr"]))
        # recording rules' own names (level:metric:operations) are not exported metrics
        missing = {m for m in used if m not in exported and ":" not in m}
        assert not missing, f"{rule.get('alert') or rule.get('record')}: {missing} not exported"
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("page", "ticket")
            assert rule["annotations"]["summary"]


def test_every_alert_has_a_unit_test() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    tested: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested.update(
                t["alertname"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]
            )
    assert alerts <= tested, f"alerts never shown to fire: {alerts - tested}"


@needs_promtool
def test_rules_are_valid() -> None:
    result = _promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against a rule file with one threshold changed."""
    (tmp_path / "rules").mkdir()
    text = RULES.read_text().replace(
        "skyloop:dead_letter_ratio:rate5m > 0.05", "skyloop:dead_letter_ratio:rate5m > 0.5"
    )
    assert text != RULES.read_text()
    (tmp_path / "rules" / "skyloop.yml").write_text(text)
    (tmp_path / "tests").mkdir()
    copy = tmp_path / "tests" / "errors_latency.yml"
    shutil.copy(PROMETHEUS / "tests" / "errors_latency.yml", copy)
    result = _promtool("test", "rules", copy)
    assert result.returncode != 0
    assert "SkyloopDeadLetterRateHigh" in result.stdout + result.stderr


@pytest.mark.skipif(
    shutil.which("amtool") is None, reason="needs amtool (Debian package prometheus-alertmanager)"
)
def test_alertmanager_config_is_valid_and_routes_pages() -> None:
    config = PROMETHEUS / "alertmanager.yml"
    amtool = shutil.which("amtool")
    assert amtool is not None
    check = subprocess.run(
        [amtool, "check-config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for severity, receiver in (("page", "skyloop-oncall"), ("ticket", "skyloop-tickets")):
        route = subprocess.run(
            [
                amtool,
                "config",
                "routes",
                "test",
                "--config.file",
                str(config),
                f"severity={severity}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert route.stdout.strip() == receiver, route.stdout + route.stderr

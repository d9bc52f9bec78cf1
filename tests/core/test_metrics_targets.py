"""The local run's Prometheus targets: distinct ports, file_sd format, the shipped config."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from processors.core.config import Settings
from processors.core.metrics_targets import (
    TARGETS_FILE,
    assign_ports,
    clear_targets,
    file_sd,
    write_targets,
)
from tests.conftest import REPO_ROOT


def test_ports_are_distinct_and_the_files_are_file_sd(tmp_path: Path) -> None:
    ports = assign_ports(["sink", "score", "ingest"])
    assert len(set(ports.values())) == 3
    run, data = tmp_path / "data" / "runs" / "r1", tmp_path / "data"
    run.mkdir(parents=True)
    path = write_targets(run, data, ports)
    groups = json.loads(path.read_text())
    assert groups == json.loads((data / TARGETS_FILE).read_text()) == file_sd(ports, "r1")
    for group in groups:  # file_sd: a list of {targets: [host:port], labels: {str: str}}
        (target,) = group["targets"]
        assert target == f"127.0.0.1:{ports[group['labels']['processor']]}"
        assert group["labels"]["run"] == "r1"
    # a newer run took the data dir's file over: the older run's end leaves it alone
    newer = data / "runs" / "r2"
    newer.mkdir()
    write_targets(newer, data, {"sink": 1})
    clear_targets(run, data)
    assert json.loads((data / TARGETS_FILE).read_text()) == file_sd({"sink": 1}, "r2")
    clear_targets(newer, data)
    assert json.loads((data / TARGETS_FILE).read_text()) == []
    assert json.loads(path.read_text()) == groups  # the run's own file is its record


def test_the_shipped_local_config_scrapes_the_default_data_dir_with_the_rules() -> None:
    config_path = REPO_ROOT / "infra" / "prometheus" / "prometheus.local.yml"
    config = yaml.safe_load(config_path.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"].startswith("skyloop")  # the rules match job=~"skyloop.*"
    (sd,) = job["file_sd_configs"]
    (target_file,) = sd["files"]
    expected = (REPO_ROOT / Settings().data_dir / TARGETS_FILE).resolve()
    assert (config_path.parent / target_file).resolve() == expected
    (rules,) = config["rule_files"]
    assert list(config_path.parent.glob(rules))

"""The worker registry against the code: topics, processors, compose services, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from processors import local, topology
from processors.cli import main
from processors.core.config import Settings
from processors.core.control import EVENT_TYPES
from processors.core.exceptions import ConfigError
from processors.core.records import TOPICS
from processors.core.worker import WHOLE_LOG
from tests.conftest import REPO_ROOT

SPECS = topology.workers()
NAMES = ("ingest", "score", "controller", "detect", "train", "sink")


def test_six_workers_with_unique_names() -> None:
    assert topology.worker_names() == NAMES
    assert topology.worker_names(aliases=True) == (*NAMES, "stats")
    for spec in SPECS:
        assert spec.summary and "\n" not in spec.summary
        assert callable(spec.load_run())


def test_every_topic_a_spec_names_is_in_the_catalogue() -> None:
    for spec in SPECS:
        assert set(spec.consumes) <= set(TOPICS), spec.name
        assert set(spec.produces) <= set(TOPICS), spec.name


def test_every_catalogue_topic_is_produced_and_consumed() -> None:
    produced = {t for spec in SPECS for t in spec.produces}
    consumed = {t for spec in SPECS for t in spec.consumes}
    assert set(TOPICS) <= produced
    assert set(TOPICS) <= consumed


def test_control_events_named_are_event_types() -> None:
    for spec in SPECS:
        assert spec.folds == WHOLE_LOG or set(spec.folds) <= EVENT_TYPES, spec.name
        assert set(spec.emits) <= EVENT_TYPES, spec.name
    emitters = {spec.name for spec in SPECS if spec.emits}
    assert emitters == {"controller", "train"}
    assert {spec.name for spec in SPECS if "control.events" in spec.produces} == emitters


def test_settings_sections_a_spec_names_exist() -> None:
    sections = {name for name in Settings.model_fields if name not in ("data_dir", "progress_dir")}
    for spec in SPECS:
        assert spec.settings_sections, spec.name
        assert set(spec.settings_sections) <= sections, spec.name


def test_batch_loops_consume_exactly_their_processors_inputs() -> None:
    loops = [spec for spec in SPECS if spec.mode == "batch loop"]
    assert {spec.name for spec in loops} == {"score", "detect", "sink"}
    for spec in SPECS:
        processor = spec.load_processor()
        if spec.mode != "batch loop":
            assert processor is None, spec.name
            continue
        assert processor is not None
        assert tuple(spec.consumes) == tuple(processor.inputs), spec.name
        assert processor.name == spec.name == spec.group


def test_the_controller_keeps_the_stats_group_and_name() -> None:
    controller = topology.resolve("stats")
    assert controller is topology.resolve("controller")
    assert controller.group == "stats"  # committed offsets and changelogs stay valid
    assert controller.mode == "faust app"


def test_every_worker_has_a_compose_service_running_it() -> None:
    services = yaml.safe_load((REPO_ROOT / "docker-compose.kafka.yml").read_text())["services"]
    for spec in SPECS:
        assert services[spec.name]["command"][:2] == ["worker", spec.name]


def test_the_local_stack_starts_every_worker() -> None:
    assert {*local.WORKERS, "ingest"} == set(NAMES)


def test_importing_the_registry_imports_no_heavy_library() -> None:
    code = (
        "import sys, processors.topology as t; t.workers(); import processors.cli; "
        "heavy = {'torch', 'faust', 'timm', 'ultralytics', 'chdb'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120)


def test_skyloop_topology_lists_every_worker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology"]) == 0
    text = capsys.readouterr().out
    headers = [line.split()[1] for line in text.splitlines() if line.startswith("worker ")]
    assert headers == [f"{name}:" if name != "controller" else name for name in NAMES]
    block = text.split("\n\n")[NAMES.index("score")]
    assert "  consumes images.raw\n" in block and "  produces scores, images.dlq\n" in block
    assert main(["topology", "--format", "json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert [w["name"] for w in described] == list(NAMES)
    controller = described[2]
    assert controller["aliases"] == ["stats"] and controller["folds"] == "all"
    assert "calibration.updated" in controller["emits"]
    assert controller["consumes"] == ["scores", "images.dlq", "candidates"]


def test_an_unknown_worker_is_refused_naming_the_workers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["worker", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "unknown worker 'nonsense'" in err
    for name in NAMES:
        assert name in err
    with pytest.raises(ConfigError, match="accepted: ingest, score, controller"):
        topology.resolve("nonsense")

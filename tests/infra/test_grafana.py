"""Grafana provisioning and dashboards: every SQL query runs on chdb against the real schema
(migrations) and seeded rows, after Grafana's and the ClickHouse plugin's expansion; every
PromQL expression passes ``promtool check rules``; the SQL alert rules fire where they should.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from processors.core.clickhouse import Client, connect
from processors.sink.migrations import apply_migrations
from processors.sink.writer import ClickHouseWriter
from tests.infra.grafana_sql import GrafanaRange, expand
from tests.infra.test_prometheus import RULES, _exported_names
from tests.sink.conftest import candidate, control_event, dead_letter, image, roundtrip, score

GRAFANA = Path(__file__).resolve().parents[2] / "infra" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROVISIONING = GRAFANA / "provisioning"
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
NOW = datetime.now(UTC).replace(microsecond=0)
SOURCES = ("synth", "ztf")
MODELS = ("effnet-lite0@1", "effnet-lite0@2")
RANGE = GrafanaRange(NOW - timedelta(hours=24), NOW + timedelta(minutes=1), timedelta(minutes=5))
VARIABLES = {"source": list(SOURCES), "model": list(MODELS)}


def _dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, query model) of every panel target, template variable and annotation."""
    for panel in _panels(doc["panels"]):
        for target in panel.get("targets", []):
            yield f"{doc['uid']} / {panel['title']} / {target['refId']}", target
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            model = {"datasource": variable["datasource"], "rawSql": variable["query"]}
            yield f"{doc['uid']} / variable {variable['name']}", model
    for annotation in doc["annotations"]["list"]:
        yield f"{doc['uid']} / annotation {annotation['name']}", annotation["target"]


def _sql_queries() -> list[tuple[str, str]]:
    return [
        (where, model["rawSql"])
        for path in DASHBOARDS
        for where, model in _queries(_dashboard(path))
        if model["datasource"]["type"] == CLICKHOUSE_TYPE
    ]


def _promql_queries() -> list[tuple[str, str]]:
    return [
        (where, model["expr"])
        for path in DASHBOARDS
        for where, model in _queries(_dashboard(path))
        if model["datasource"]["type"] == "prometheus"
    ]


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROVISIONING / "alerting" / "skyloop.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


# -- seeded warehouse ----------------------------------------------------------------------
def _at(record: dict[str, Any], schema: str, **fields: Any) -> dict[str, Any]:
    return roundtrip({**record, **fields}, schema)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """Every table the dashboards read, with rows of the last day (through the real writer).

    synth: images every 10 minutes until now, one candidate in four, two model versions and a
    shadow; a calibration 8 days ago (stale). ztf: 24 images, every 5 minutes, ending 3 hours
    ago (silent since), all candidates, none cross-matched; dead letters from ingest (source
    known) and the sink.
    """
    client = connect(f"chdb://{tmp_path_factory.mktemp('grafana') / 'ch'}")
    try:
        apply_migrations(client)
        writer = ClickHouseWriter(client)
        images, scores, candidates = [], [], []
        for i in range(48):
            for source, at in (
                ("synth", NOW - timedelta(minutes=10 * i)),
                ("ztf", NOW - timedelta(hours=3, minutes=5 * i)),
            ):
                if source == "ztf" and i >= 24:
                    continue
                img = _at(image(source, i), "skyloop.ImageRecord", fetched_at=at, observed_at=at)
                images.append((img, 0, len(images)))
                flagged = source == "ztf" or i % 4 == 0
                for model, role in ((MODELS[i % 2], "production"), (MODELS[1], "shadow")):
                    s = _at(
                        score(img["image_id"], source, role=role),
                        "skyloop.ScoreRecord",
                        model_version=model,
                        is_candidate=flagged,
                        scored_at=at + timedelta(seconds=1),
                        latency_ms=5.0 + i % 7,
                    )
                    scores.append((s, 0, len(scores)))
                if flagged:
                    c = _at(
                        candidate(img["image_id"], source),
                        "skyloop.CandidateRecord",
                        model_version=MODELS[i % 2],
                        detected_at=at + timedelta(seconds=2),
                        crossmatches=[] if source == "ztf" else candidate("x")["crossmatches"],
                    )
                    candidates.append((c, 0, len(candidates)))
        writer.insert("images.raw", images)
        writer.insert("scores", scores)
        writer.insert("candidates", candidates)
        events = []
        for n, (kind, subject, at, params) in enumerate(
            [
                ("calibration.updated", "synth", NOW - timedelta(days=8), {}),
                ("calibration.updated", "ztf", NOW - timedelta(hours=5), {}),
                ("drift.detected", "ztf", NOW - timedelta(hours=5, minutes=5), {}),
                ("threshold.set", "synth", NOW - timedelta(hours=6), {"value": 0.93}),
                ("threshold.decayed", "synth", NOW - timedelta(hours=2), {"value": 0.91}),
                ("model.promoted", MODELS[1], NOW - timedelta(hours=12), {}),
                ("model.rolled_back", MODELS[1], NOW - timedelta(hours=1), {"reason": "health"}),
                ("pipeline.paused", "pipeline", NOW - timedelta(minutes=30), {"reason": "errors"}),
            ]
        ):
            base = control_event(f"00000000-0000-4000-8000-{n:012d}")
            params = {**base["params"], **params, "model_version": MODELS[1]}
            e = _at(base, "skyloop.ControlEvent", type=kind, subject=subject, at=at, params=params)
            events.append((e, 0, n))
        writer.insert("control.events", events)
        letters = []
        for n in range(3):
            letter = _at(
                dead_letter(-1, processor="ingest"),
                "skyloop.DeadLetter",
                original_topic="source:ztf",
                source="ztf",
                at=NOW - timedelta(hours=4, minutes=n),
            )
            letters.append((letter, 1, n))
        sink = _at(
            dead_letter(40, processor="sink"), "skyloop.DeadLetter", at=NOW - timedelta(minutes=5)
        )
        letters.append((sink, 2, 9))
        writer.insert("images.dlq", letters)
        yield client
    finally:
        client.close()


# -- provisioning ----------------------------------------------------------------------------
def test_provisioning_names_the_datasources_every_dashboard_uses() -> None:
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "skyloop.yml").read_text())
    by_uid = {d["uid"]: d["type"] for d in provisioned["datasources"]}
    assert set(by_uid.values()) == {"prometheus", CLICKHOUSE_TYPE}
    uids = set()
    assert len(DASHBOARDS) >= 5
    for path in DASHBOARDS:
        doc = _dashboard(path)
        assert doc["uid"] == path.stem and doc["uid"] not in uids
        uids.add(doc["uid"])
        for where, model in _queries(doc):
            ds = model["datasource"]
            assert by_uid.get(ds["uid"]) == ds["type"], f"{where}: unknown datasource {ds}"
    for rule in _alert_rules():
        for query in rule["data"]:
            assert query["datasourceUid"] in {*by_uid, "__expr__"}, rule["uid"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "skyloop.yml").read_text())
    assert providers["providers"][0]["type"] == "file"


def test_dashboards_cover_the_views_operators_need() -> None:
    assert {p.stem for p in DASHBOARDS} >= {
        "skyloop-overview",
        "skyloop-sources",
        "skyloop-models",
        "skyloop-self-correction",
        "skyloop-candidates",
    }


# -- SQL -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("where", "sql"), _sql_queries(), ids=[w for w, _ in _sql_queries()])
def test_dashboard_sql_runs_on_the_schema_and_returns_rows(
    warehouse: Client, where: str, sql: str
) -> None:
    result = warehouse.query(expand(sql, RANGE, VARIABLES))
    assert result.result_rows, f"{where}: no rows on the seeded warehouse"
    names = result.column_names
    if "time" in names:  # time series: the plugin needs a time column, sorted
        times = [row[names.index("time")] for row in result.result_rows]
        assert times == sorted(times), where


def test_candidate_thumbnails_are_images_grafana_can_show(warehouse: Client) -> None:
    (sql,) = [s for w, s in _sql_queries() if w.endswith("Latest candidates / A")]
    result = warehouse.query(expand(sql, RANGE, VARIABLES))
    column = result.column_names.index("thumbnail")
    thumbnails = [row[column] for row in result.result_rows]
    assert len(thumbnails) == 12 + 24  # every served candidate of the day (under the limit)
    for thumbnail in thumbnails:
        head, _, data = thumbnail.partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")


def test_variables_narrow_the_sources(warehouse: Client) -> None:
    (sql,) = [s for w, s in _sql_queries() if w.endswith("Flag rate per hour (stored) / A")]
    only_ztf = warehouse.query(expand(sql, RANGE, {**VARIABLES, "source": ["ztf"]}))
    sources = {row[only_ztf.column_names.index("source")] for row in only_ztf.result_rows}
    assert sources == {"ztf"}
    rates = [row[only_ztf.column_names.index("flag_rate")] for row in only_ztf.result_rows]
    assert rates and all(rate == 1.0 for rate in rates)


def test_macros_expand_as_the_plugin_does() -> None:
    when = GrafanaRange(
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 4, 4, 5, tzinfo=UTC),
        timedelta(seconds=30),
    )
    sql = "WHERE $__timeFilter(at) AND x > $__fromTime AND $__timeInterval(at) AND $__interval_s"
    assert expand(sql, when, {}) == (
        "WHERE at >= toDateTime(1767323045) AND at <= toDateTime(1767326645) AND "
        "x > toDateTime(1767323045) AND "
        "toStartOfInterval(toDateTime(at), INTERVAL 30 second) AND 30"
    )
    assert expand("source IN (${source:singlequote})", when, {"source": ["a", "b"]}) == (
        "source IN ('a','b')"
    )
    with pytest.raises(ValueError, match="unknown macro"):
        expand("$__nope(x)", when, {})


# -- SQL alert rules -------------------------------------------------------------------------
EXPECTED_FIRING = {
    "skyloop-source-silent": {("ztf",)},
    "skyloop-calibration-stale": {("synth",)},
    "skyloop-sink-dead-letters": {("sink",)},
    "skyloop-candidates-unmatched": {("ztf",)},
}


def _firing(result: Any, evaluator: dict[str, Any]) -> set[tuple[str, ...]]:
    """Grafana's reading of a table frame: string columns are labels, the number the value."""
    kind, (threshold,) = evaluator["type"], evaluator["params"]
    test = {"gt": lambda v: v > threshold, "lt": lambda v: v < threshold}[kind]
    fired = set()
    for row in result.result_rows:
        labels = tuple(v for v in row if isinstance(v, str))
        values = [v for v in row if isinstance(v, int | float)]
        assert len(values) == 1, f"one numeric column per row, got {row}"
        if test(values[0]):
            fired.add(labels)
    return fired


@pytest.mark.parametrize("rule", _alert_rules(), ids=[r["uid"] for r in _alert_rules()])
def test_sql_alert_rules_fire_where_they_should(warehouse: Client, rule: dict[str, Any]) -> None:
    query, condition = rule["data"]
    assert rule["condition"] == condition["refId"] and condition["model"]["expression"] == "A"
    span = query["relativeTimeRange"]
    when = GrafanaRange(
        NOW - timedelta(seconds=span["from"]), NOW - timedelta(seconds=span["to"]), RANGE.interval
    )
    result = warehouse.query(expand(query["model"]["rawSql"], when, {}))
    (evaluator,) = [c["evaluator"] for c in condition["model"]["conditions"]]
    assert _firing(result, evaluator) == EXPECTED_FIRING[rule["uid"]]


# -- PromQL ----------------------------------------------------------------------------------
GRAFANA_PROM_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$source": "synth|ztf",
}


def _grafana_promql(expr: str) -> str:
    for name, value in GRAFANA_PROM_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unexpanded variable in {expr}"
    return expr


def test_dashboard_promql_uses_exported_metrics() -> None:
    recorded = {
        rule["record"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    known = _exported_names() | recorded | {"up", "ALERTS"}
    for where, expr in _promql_queries():
        names = set(
            re.findall(r"\b((?:skyloop|process)[a-z0-9_:]+|up|ALERTS)\b(?=\s*[{\[(]|\s|$)", expr)
        )
        missing = names - known
        assert not missing, f"{where}: {missing}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian prometheus)")
def test_dashboard_promql_parses(tmp_path: Path) -> None:
    queries = _promql_queries()
    assert len(queries) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboard_expressions",
                "rules": [
                    {"record": f"dashboard_expression_{n}", "expr": _grafana_promql(expr)}
                    for n, (_where, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout

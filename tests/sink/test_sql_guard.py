"""Read-only SQL: the sink's query endpoint (a real QueryServer on a real chdb) and the direct
chdb path answer reads and refuse writes, DDL, settings changes and reaches outside the
database; the endpoint wants the run's token; a refused DROP leaves the sink's inserts working.
"""

from __future__ import annotations

import json
import re
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from processors.cli import main
from processors.core.clickhouse import Client, connect
from processors.core.exceptions import SkyloopError
from processors.core.query_token import TOKEN_HEADER, new_token, write_private
from processors.local_restarts import _SINK_COUNTS_SQL
from processors.sink.migrations import apply_migrations
from processors.sink.query import events_query, query
from processors.sink.query_server import QueryServer
from processors.sink.sql_guard import QueryRefused
from processors.sink.writer import ClickHouseWriter
from processors.top import TOTALS_SQL

ROOT = Path(__file__).resolve().parents[2]


def _batches(make: SimpleNamespace, seed: int = 0) -> dict[str, list]:
    images = [make.image("synth", seed + i, anomaly=i == 0) for i in range(4)]
    ids = [img["image_id"] for img in images]
    return {
        "images.raw": [(img, i % 2, 100 * seed + i) for i, img in enumerate(images)],
        "scores": [(make.score(i), 0, 100 * seed + n) for n, i in enumerate(ids)],
        "candidates": [(make.candidate(ids[0]), 0, seed)],
        "control.events": [(make.control_event(), 0, 4)],
        "images.dlq": [(make.dead_letter(17), 0, 1)],
    }


@pytest.fixture
def run(tmp_path: Path, make: SimpleNamespace) -> Iterator[SimpleNamespace]:
    """A run folder whose ClickHouse holds a few records of every kind; ``sink`` writes to it."""
    folder = tmp_path / "run"
    sink = connect(f"chdb://{folder / 'clickhouse'}")
    try:
        apply_migrations(sink)
        ClickHouseWriter(sink).insert_many(_batches(make))
        yield SimpleNamespace(dir=folder, sink=sink, lock=threading.Lock())
    finally:
        sink.close()


@pytest.fixture
def served(run: SimpleNamespace) -> Iterator[SimpleNamespace]:
    """The sink's endpoint serving ``run``, announced in its ``sink.json`` as the sink does."""
    token = new_token()
    server = QueryServer(lambda: connect(f"chdb://{run.dir / 'clickhouse'}"), run.lock, token)
    server.start()
    write_private(run.dir / "sink.json", {"port": server.port, "token": token})
    try:
        yield SimpleNamespace(**vars(run), server=server, token=token)
    finally:
        server.stop()
        (run.dir / "sink.json").unlink()


REFUSED = [
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file()"),
    ("SELECT * FROM url('http://127.0.0.1:9/x', 'LineAsString')", "url()"),
    ("INSERT INTO FUNCTION file('OUT/written.csv', 'CSV', 'x UInt8') VALUES (1)", "INSERT"),
    ("DROP TABLE scores", "DROP"),
    ("SET max_execution_time = 0", "SET"),
    ("ALTER TABLE scores DELETE WHERE 1", "ALTER"),
    ("OPTIMIZE TABLE scores FINAL", "OPTIMIZE"),
    ("SYSTEM FLUSH LOGS", "SYSTEM"),
    ("KILL QUERY WHERE 1", "KILL"),
    ("TRUNCATE TABLE images", "TRUNCATE"),
    ("CREATE TABLE x (a UInt8) ENGINE = Memory", "CREATE"),
    ("RENAME TABLE scores TO s2", "RENAME"),
    ("USE system", "USE"),
    ("SELECT file('/etc/hostname')", "file()"),
    ("SELECT * FROM scores INTO OUTFILE 'OUT/dump.csv'", "INTO OUTFILE"),
    ("SELECT 1; DROP TABLE scores", "several statements"),
    ("select * from view(select * from FILE('/etc/passwd', 'LineAsString'))", "FILE()"),
    ("SELECT 1 IN (SELECT * FROM s3('http://127.0.0.1:9/b/k.csv', 'CSV', 'x UInt8'))", "s3()"),
    ("SELECT * FROM remote('127.0.0.1:9', system.one)", "remote()"),
    ("SELECT * FROM executable('x.sh', 'CSV', 'x UInt8')", "executable()"),
    ("SELECT * FROM mysql('127.0.0.1:9', 'd', 't', 'u', 'p')", "mysql()"),
    ("SELECT 1 SETTINGS max_execution_time = 1000", "max_execution_time"),
    ("SELECT 1 FORMAT JSON", "FORMAT"),
    ("DESCRIBE TABLE file('/etc/passwd', 'LineAsString')", "file()"),
    ("EXPLAIN PLAN SELECT * FROM file('/etc/passwd', 'LineAsString')", "file()"),
    ("EXPLAIN SYNTAX INSERT INTO scores SELECT * FROM scores", "INSERT"),
    ("SELECT * FROM url('http://127.0.0.1:9/x', 'LineAsString') SETTINGS readonly = 0", "readonly"),
]

ANSWERED = [
    "SELECT source, count(), sum(is_candidate) FROM scores FINAL GROUP BY source",
    "SELECT provenance['path'], ra, dec FROM images FINAL",
    "SELECT b.label, b.confidence FROM candidates FINAL ARRAY JOIN boxes AS b",
    "SELECT arrayJoin(mapKeys(scores)) AS d, count() FROM scores FINAL GROUP BY d ORDER BY d",
    "SELECT * FROM hourly_source_stats",
    "SELECT model_version, uniqMerge(images) FROM hourly_scores GROUP BY model_version",
    "WITH (SELECT count() FROM images FINAL) AS n SELECT n, number FROM numbers(2)",
    "SHOW TABLES",
    "DESCRIBE TABLE scores",
    "SELECT count() FROM dead_letters FINAL -- a trailing comment;",
    "SELECT 'a file(x) INTO OUTFILE y' AS text",
    "SELECT i.provenance['path'], i.format, round(i.ra, 4) FROM images AS i FINAL "
    "INNER JOIN (SELECT image_id FROM scores FINAL WHERE role = 'production') AS s "
    "ON s.image_id = i.image_id ORDER BY 1",
    TOTALS_SQL,
    _SINK_COUNTS_SQL,
    events_query(["threshold.set"], "synth"),
]


def _dashboard_queries() -> list[str]:
    """Every SQL query of the Grafana dashboards, with Grafana's macros filled in."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("rawSql", "query") and isinstance(value, str) and "SELECT" in value:
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted((ROOT / "infra/grafana/dashboards").glob("*.json")):
        walk(json.loads(path.read_text()))
    fill = [
        (r"\$__timeFilter\((\w+)\)", r"\1 >= toDateTime('2000-01-01')"),
        (r"\$__timeInterval\((\w+)\)", r"toStartOfHour(\1)"),
        (r"\$\{source:singlequote\}", "'synth'"),
        (r"\$\{model:singlequote\}", "'effnet-lite0@1'"),
    ]
    for pattern, replacement in fill:
        found = [re.sub(pattern, replacement, q) for q in found]
    assert len(found) >= 20 and not any("$" in q for q in found)
    return found


def _tables(client: Client) -> int:
    return int(client.command("SELECT count() FROM system.tables WHERE database = 'default'"))  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["endpoint", "direct"])
def test_refuses_writes_ddl_settings_and_the_outside(
    path: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    run = request.getfixturevalue("served" if path == "endpoint" else "run")
    assert (run.dir / "sink.json").exists() == (path == "endpoint")
    tables = _tables(run.sink)
    for sql, what in REFUSED:
        sql = sql.replace("OUT/", f"{tmp_path}/")
        with pytest.raises(QueryRefused) as refused:
            query(run.dir, sql)
        message = str(refused.value)
        assert what in message, (sql, message)
        assert "read-only" in message, (sql, message)
    assert not (tmp_path / "written.csv").exists() and not (tmp_path / "dump.csv").exists()
    assert _tables(run.sink) == tables
    assert int(run.sink.command("SELECT count() FROM scores FINAL")) == 4  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["endpoint", "direct"])
def test_answers_reads_the_readme_and_the_dashboards_use(
    path: str, request: pytest.FixtureRequest
) -> None:
    run = request.getfixturevalue("served" if path == "endpoint" else "run")
    for sql in ANSWERED + _dashboard_queries():
        query(run.dir, sql)  # raises if refused or failed
    assert query(run.dir, ANSWERED[0])[1] == [["synth", 4, 4]]
    assert query(run.dir, ANSWERED[3])[1] == [["energy", 4], ["knn", 4], ["mahalanobis", 4]]
    assert query(run.dir, "SELECT 'a file(x) INTO OUTFILE y' AS text")[1] == [
        ["a file(x) INTO OUTFILE y"]
    ]


def _post(port: int, sql: str, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/sql", data=sql.encode(), method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_endpoint_wants_the_runs_token(served: SimpleNamespace) -> None:
    port = served.server.port
    for headers in ({}, {TOKEN_HEADER: "wrong"}, {TOKEN_HEADER: served.token[:-1]}):
        status, body = _post(port, "SELECT count() FROM scores", headers)
        assert status == 401 and TOKEN_HEADER in body["error"], (headers, body)
    assert _post(port, "SELECT count() FROM scores", {TOKEN_HEADER: served.token}) == (
        200,
        {"columns": ["count()"], "rows": [[4]]},
    )
    status, body = _post(port, "DROP TABLE scores", {TOKEN_HEADER: served.token})
    assert status == 403 and body["refused"] is True and "DROP" in body["error"]
    assert stat.S_IMODE((served.dir / "sink.json").stat().st_mode) == 0o600


def test_after_a_refused_drop_the_sinks_inserts_still_work(
    served: SimpleNamespace, make: SimpleNamespace
) -> None:
    with pytest.raises(QueryRefused, match="DROP"):
        query(served.dir, "DROP TABLE scores")
    with served.lock:
        ClickHouseWriter(served.sink).insert_many(_batches(make, seed=10))
    assert query(served.dir, "SELECT count() FROM scores FINAL")[1] == [[8]]
    assert query(served.dir, "SELECT count() FROM images FINAL")[1] == [[8]]


def test_a_long_query_holds_the_sinks_lock_only_briefly(
    served: SimpleNamespace, make: SimpleNamespace
) -> None:
    """A query that would run for minutes is stopped at the endpoint's time limit."""
    outcome: list[BaseException] = []

    def slow() -> None:
        try:
            query(served.dir, "SELECT count() FROM numbers(1000000000000)")
        except BaseException as exc:  # recorded for the main thread
            outcome.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)  # the query holds the lock now
    started = time.monotonic()
    with served.lock:
        waited = time.monotonic() - started
        ClickHouseWriter(served.sink).insert_many(_batches(make, seed=20))
    thread.join(30)
    print(f"insert waited {waited:.2f} s behind a long query")
    assert waited < 8.0, waited
    assert outcome and "5 s limit" in str(outcome[0]), outcome
    with pytest.raises(SkyloopError, match="add a LIMIT"):
        query(served.dir, "SELECT number FROM numbers(300000)")
    assert len(query(served.dir, "SELECT number FROM numbers(300000) LIMIT 10")[1]) == 10


def test_cli_sql_exits_2_naming_what_was_refused(
    run: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sql", "DROP TABLE scores", "--run", str(run.dir)]) == 2
    assert "refused: DROP" in capsys.readouterr().err
    assert main(["sql", "SELECT count() FROM images FINAL", "--run", str(run.dir)]) == 0
    assert "4" in capsys.readouterr().out

"""Answering SQL from a run's ClickHouse, and the audit trail's SQL.

:func:`query` asks the sink's loopback endpoint while the sink runs (it owns the chdb path; see
:mod:`processors.sink.query_server`), else opens the run's chdb files directly. Either way the
answer is ``(columns, rows)`` with JSON-ready values, and either way the SQL is read-only
(:mod:`processors.sink.sql_guard`); the endpoint is asked with the token in ``sink.json``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from processors.core.exceptions import ConfigError, SkyloopError, StackError
from processors.core.query_token import TOKEN_HEADER, endpoint
from processors.sink.sql_guard import DIRECT, QueryRefused, answer, read_only

__all__ = ["events_query", "query"]


def query(
    run_dir: Path, sql: str, locked_wait_s: float = 15.0
) -> tuple[list[str], list[list[Any]]]:
    """Answer read-only SQL from a run's ClickHouse: via the live sink if it runs, else chdb.

    Either way the query runs under :mod:`processors.sink.sql_guard`: a write, a schema or
    settings change, or a reach outside the database raises :class:`QueryRefused` (exit code
    2), naming what was refused. A stale ``sink.json`` (the sink is gone) falls back to the
    files. Files another process holds (a sink starting, or stopping at the end of a run) are
    asked again, the sink's endpoint first, for up to ``locked_wait_s``; another failure
    raises :class:`SkyloopError` with ClickHouse's message.
    """
    deadline = time.monotonic() + locked_wait_s
    while True:
        try:
            return _query_once(run_dir, sql)
        except StackError:  # the chdb files are held by another process
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _query_once(run_dir: Path, sql: str) -> tuple[list[str], list[list[Any]]]:
    marker = run_dir / "sink.json"
    if marker.is_file():
        port, token = endpoint(marker)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/sql",
            data=sql.encode(),
            method="POST",
            headers={TOKEN_HEADER: token},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = json.loads(response.read())
            return body["columns"], body["rows"]
        except urllib.error.HTTPError as exc:
            error = json.loads(exc.read()).get("error", str(exc))
            raise (QueryRefused if exc.code == 403 else SkyloopError)(error) from None
        except urllib.error.URLError:
            pass  # the sink is gone (stale marker): read the files directly
    from processors.core.clickhouse import connect
    from processors.sink.query_server import jsonable

    if not (run_dir / "clickhouse").is_dir():
        raise SkyloopError(f"no ClickHouse data in {run_dir}")
    client = read_only(connect(f"chdb://{(run_dir / 'clickhouse').resolve()}"), DIRECT)
    try:
        columns, rows = answer(client, sql, DIRECT)
    finally:
        client.close()
    return columns, jsonable(rows)


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def events_query(
    types: list[str] | None = None, subject: str | None = None, since: str | None = None
) -> str:
    """The audit-trail SQL, in log order, filtered by event types, subject and time; ``refused``
    is the reason the control fold refused an event (its ``RefusedEvent`` dead letter), else ''.

    Raises :class:`ConfigError` for an unknown type or a ``since`` that is not ISO 8601.

    >>> sql = events_query(["drift.detected"], "sky", "2026-12-01T10:00Z")
    >>> for part in sql.split("WHERE ")[-1].split(" AND "):
    ...     print(part)
    type IN ('drift.detected')
    subject = 'sky'
    at >= toDateTime64('2026-12-01 10:00:00.000', 3, 'UTC') ORDER BY kafka_offset
    """
    from datetime import UTC, datetime

    from processors.core.control import EVENT_TYPES

    where = []
    if types:
        unknown = sorted(set(types) - EVENT_TYPES)
        if unknown:
            raise ConfigError(
                f"--type {', '.join(unknown)}: unknown; accepted: {', '.join(sorted(EVENT_TYPES))}"
            )
        where.append(f"type IN ({', '.join(_sql_string(t) for t in types)})")
    if subject is not None:
        where.append(f"subject = {_sql_string(subject)}")
    if since is not None:
        try:
            at = datetime.fromisoformat(since)
        except ValueError:
            raise ConfigError(
                f"--since {since!r}: accepted values are ISO 8601 times, e.g. 2026-12-01T10:00Z"
            ) from None
        at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
        stamp = at.strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d}"
        where.append(f"at >= toDateTime64('{stamp}', 3, 'UTC')")
    return (
        "SELECT kafka_offset AS offset, at, type, subject, issued_by, params, evidence, refused "
        "FROM control_events FINAL LEFT JOIN (SELECT original_offset AS kafka_offset, "
        "any(message) AS refused FROM dead_letters FINAL WHERE original_topic = 'control.events' "
        "AND error_class = 'RefusedEvent' GROUP BY original_offset) AS r USING (kafka_offset) "
        + (f"WHERE {' AND '.join(where)} " if where else "")
        + "ORDER BY kafka_offset"
    )

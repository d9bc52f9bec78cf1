"""``skyloop events`` filters: validated, and real ClickHouse SQL against the real schema."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime
from pathlib import Path

import pytest

from processors.core import durations, tabular
from processors.core.clickhouse import connect
from processors.core.exceptions import ConfigError
from processors.sink import query
from processors.sink.migrations import apply_migrations


@pytest.mark.parametrize("module", [query, durations, tabular], ids=lambda m: m.__name__)
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def test_bad_filters_are_refused_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--type drift\.found: unknown"):
        query.events_query(["drift.found"])
    with pytest.raises(ConfigError, match="--since 'yesterday'"):
        query.events_query(since="yesterday")


def test_filters_select_the_right_rows_in_chdb(tmp_path: Path) -> None:
    client = connect(f"chdb://{tmp_path / 'ch'}")
    try:
        apply_migrations(client)
        columns = ["kafka_offset", "event_id", "at", "type", "subject", "issued_by"]
        rows = [
            [0, "e0", datetime(2026, 12, 1, 9, tzinfo=UTC), "calibration.updated", "sky", "c"],
            [1, "e1", datetime(2026, 12, 1, 11, tzinfo=UTC), "drift.detected", "sky", "c"],
            [2, "e2", datetime(2026, 12, 1, 12, tzinfo=UTC), "drift.detected", "o'hare", "c"],
        ]
        client.insert("control_events", rows, column_names=columns)

        def offsets(sql: str) -> list[int]:
            return [int(r[0]) for r in client.query(sql).result_rows]

        assert offsets(query.events_query()) == [0, 1, 2]
        assert offsets(query.events_query(["drift.detected"])) == [1, 2]
        assert offsets(query.events_query(subject="o'hare")) == [2]
        assert offsets(query.events_query(since="2026-12-01T10:00:00+00:00")) == [1, 2]
        assert offsets(query.events_query(["drift.detected"], "sky", "2026-12-01T10:00")) == [1]
        # an event the fold refused shows the reason of its dead letter
        letter = ["control.events", 0, 1, "RefusedEvent", "not a registered version", "sink"]
        names = ["original_topic", "original_partition", "original_offset", "error_class"]
        client.insert("dead_letters", [letter], column_names=[*names, "message", "processor"])
        refused = [r[-1] for r in client.query(query.events_query()).result_rows]
        assert refused == ["", "not a registered version", ""]
    finally:
        client.close()

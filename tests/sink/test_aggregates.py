"""Migration 003: the dead_letters identity keeps every failure, and the hourly aggregates.

Rows go in through the real :class:`ClickHouseWriter` (as the sink writes them) on chdb; the
materialized views fill the hourly tables on each insert.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from processors.core.clickhouse import Client, connect
from processors.sink.migrations import apply_migrations, default_ddl_dir, load_migrations
from processors.sink.writer import ClickHouseWriter

V3 = "003_hourly_aggregates_and_dead_letter_identity.sql"


def _source_failure(make: SimpleNamespace, source: str = "ztf") -> dict[str, Any]:
    """A failure with no origin offset: the source could not decode what it fetched."""
    record = dict(make.dead_letter(-1, processor="ingest"))
    record.update(original_topic=f"source:{source}", partition=-1, source=source)
    return make.roundtrip(record, "skyloop.DeadLetter")


def _dead_letter_count(client: Client) -> int:
    return int(client.command("SELECT count() FROM dead_letters FINAL"))


def test_identical_failures_from_one_origin_are_kept_apart(
    client: Client, make: SimpleNamespace
) -> None:
    writer = ClickHouseWriter(client)
    same = _source_failure(make)
    # the same bytes failed twice at the source: two dead letters at two places on images.dlq
    writer.insert("images.dlq", [(same, 0, 10), (same, 0, 11)])
    # a dead letter re-delivered (same place on images.dlq) replaces itself
    writer.insert("images.dlq", [(same, 0, 11)])
    # a failure with a real origin offset dead-lettered twice (its batch redelivered) is one
    origin = make.dead_letter(17)
    writer.insert("images.dlq", [(origin, 1, 20), (origin, 1, 21)])
    assert _dead_letter_count(client) == 3
    stats = client.query(
        "SELECT source, dead_letters FROM hourly_source_stats WHERE dead_letters > 0 "
        "ORDER BY source"
    ).result_rows
    assert stats == [("", 1), ("ztf", 2)]


def test_version_2_warehouse_is_rebuilt_with_its_rows(
    tmp_path: Path, make: SimpleNamespace
) -> None:
    """Upgrade in place; re-running a half-applied file from its start changes nothing."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    # a version 2 warehouse, plus the later column additions the current writer needs
    later = sorted(p.name for p in default_ddl_dir().glob("00[4-9]_*.sql"))
    for name in ("001_initial.sql", "002_dead_letter_source.sql", *later):
        shutil.copy(default_ddl_dir() / name, v2 / name)
    client = connect(f"chdb://{tmp_path / 'old'}")
    try:
        apply_migrations(client, v2)
        writer = ClickHouseWriter(client)
        writer.insert("images.dlq", [(_source_failure(make), 0, 1), (make.dead_letter(17), 0, 2)])
        writer.insert("images.raw", [(make.image(seed=1), 0, 1)])
        writer.insert("scores", [(make.score("a"), 0, 1)])
        assert apply_migrations(client) == [V3]
        key = client.command(
            "SELECT sorting_key FROM system.tables WHERE database = currentDatabase() "
            "AND name = 'dead_letters'"
        )
        assert "kafka_offset" in str(key)
        assert _dead_letter_count(client) == 2
        # back-filled aggregates of the rows stored before the upgrade
        row = client.query(
            "SELECT images, scored, flags, dead_letters FROM hourly_source_stats "
            "WHERE source = 'synth'"
        ).result_rows
        assert row == [(1, 1, 1, 0)]
        # stopped after each statement, then re-run from the first (as the runner does)
        statements = next(m for m in load_migrations() if m.name == V3).statements
        for stop in range(len(statements)):
            for statement in (*statements[:stop], *statements):
                client.command(statement)
            assert _dead_letter_count(client) == 2
            assert client.query(
                "SELECT images, scored, flags FROM hourly_source_stats WHERE source = 'synth'"
            ).result_rows == [(1, 1, 1)]
        assert "dead_letters_v3" not in {
            name
            for (name,) in client.query(
                "SELECT name FROM system.tables WHERE database = currentDatabase()"
            ).result_rows
        }
    finally:
        client.close()


def test_hourly_source_stats_count_each_image_once(client: Client, make: SimpleNamespace) -> None:
    writer = ClickHouseWriter(client)
    images = [make.image("synth", seed) for seed in range(6)]
    writer.insert("images.raw", [(img, 0, i) for i, img in enumerate(images)])
    scores = []
    for i, img in enumerate(images):
        s = dict(make.score(img["image_id"]))
        s.update(is_candidate=i < 2, latency_ms=float(i + 1))
        if i >= 4:  # the next hour
            s["scored_at"] = s["scored_at"] + timedelta(hours=1)
        scores.append(make.roundtrip(s, "skyloop.ScoreRecord"))
    shadow = make.score(images[0]["image_id"], role="shadow")
    writer.insert("scores", [(s, 0, i) for i, s in enumerate(scores)] + [(shadow, 0, 99)])
    writer.insert("scores", [(scores[0], 0, 0)])  # a redelivered batch
    rows = client.query(
        "SELECT hour, images, scored, flags, round(flag_rate, 3), latency_p50_ms, latency_p99_ms "
        "FROM hourly_source_stats WHERE source = 'synth' ORDER BY hour"
    ).result_rows
    hour = make.T0.replace(minute=0, second=0, microsecond=0, tzinfo=None)
    assert [r[0].replace(tzinfo=None) for r in rows] == [hour, hour + timedelta(hours=1)]
    assert [r[1:5] for r in rows] == [(6, 4, 2, 0.5), (0, 2, 0, 0.0)]
    # quantiles of latencies 1, 2, 3, 4 (+ the duplicate 1) and 5, 6
    assert 1.0 <= rows[0][5] <= 3.0 and 3.0 <= rows[0][6] <= 4.0
    assert 5.0 <= rows[1][5] <= 6.0
    per_role = client.query(
        "SELECT role, uniqMerge(images) FROM hourly_scores GROUP BY role ORDER BY role"
    ).result_rows
    assert per_role == [("production", 6), ("shadow", 1)]

from __future__ import annotations

from pathlib import Path

import pytest

from processors.core.clickhouse import Client
from processors.sink.migrations import (
    MigrationError,
    apply_migrations,
    default_ddl_dir,
    load_migrations,
    split_statements,
)

TABLES = {"images", "scores", "candidates", "control_events", "dead_letters", "schema_migrations"}


def _tables(client: Client) -> dict[str, str]:
    rows = client.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
    ).result_rows
    return {name: engine for name, engine in rows}


def test_fresh_database_gets_every_table_once(client: Client) -> None:
    # the fixture applied the migrations; a second run is a no-op
    tables = _tables(client)
    assert set(tables) >= TABLES
    assert all(tables[name] == "ReplacingMergeTree" for name in TABLES)
    assert apply_migrations(client) == []
    recorded = client.query(
        "SELECT version, name FROM schema_migrations FINAL ORDER BY version"
    ).result_rows
    files = sorted(p.name for p in default_ddl_dir().glob("[0-9][0-9][0-9]_*.sql"))
    assert recorded == [(int(name[:3]), name) for name in files]
    assert files[:2] == ["001_initial.sql", "002_dead_letter_source.sql"]
    assert client.command("SELECT count() FROM schema_migrations") == len(files)


def test_a_version_1_database_gains_the_dead_letter_source(tmp_path: Path) -> None:
    """An existing warehouse is upgraded in place: its dead letters keep, with source NULL."""
    from processors.core.clickhouse import connect

    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "001_initial.sql").write_text((default_ddl_dir() / "001_initial.sql").read_text())
    client = connect(f"chdb://{tmp_path / 'old'}")
    try:
        assert apply_migrations(client, v1) == ["001_initial.sql"]
        client.command(
            "INSERT INTO dead_letters (original_topic, original_partition, original_offset, raw, "
            "error_class, message, processor, at, kafka_topic, kafka_partition, kafka_offset) "
            "VALUES ('images.raw', 0, 7, 'x', 'BadImageError', 'm', 'score', now64(3), "
            "'images.dlq', 0, 1)"
        )
        later = sorted(p.name for p in default_ddl_dir().glob("[0-9][0-9][0-9]_*.sql"))[1:]
        assert apply_migrations(client) == later and later[0] == "002_dead_letter_source.sql"
        column = client.query(
            "SELECT type FROM system.columns WHERE database = currentDatabase() "
            "AND table = 'dead_letters' AND name = 'source'"
        ).result_rows
        assert column == [("Nullable(String)",)]
        rows = client.query("SELECT original_offset, source FROM dead_letters").result_rows
        assert rows == [(7, None)]
        # idempotent DDL: re-running the statement itself (as after a half-applied file) is a no-op
        for statement in load_migrations()[1].statements:
            client.command(statement)
    finally:
        client.close()


def test_applies_in_version_order_and_resumes_after_a_bad_file(
    client: Client, tmp_path: Path
) -> None:
    ddl = tmp_path / "ddl"  # numbered after the repository's files, which the fixture applied
    ddl.mkdir()
    (ddl / "030_second.sql").write_text(
        "-- runs after 020\nALTER TABLE t_mig ADD COLUMN IF NOT EXISTS y String;\n"
    )
    (ddl / "020_first.sql").write_text(
        "CREATE TABLE IF NOT EXISTS t_mig (x UInt8, s String DEFAULT 'a;b') "
        "ENGINE = MergeTree ORDER BY x;"
    )
    (ddl / "031_broken.sql").write_text(
        "CREATE TABLE t_bad (x Strin) ENGINE = MergeTree ORDER BY x;"
    )

    with pytest.raises(MigrationError, match=r"031_broken\.sql: statement 1 of 1 failed"):
        apply_migrations(client, ddl)
    # the good files before the bad one stay applied and recorded
    columns = client.query("SELECT name FROM system.columns WHERE table = 't_mig'").result_rows
    assert [c for (c,) in columns] == ["x", "s", "y"]
    (ddl / "031_broken.sql").write_text("CREATE TABLE IF NOT EXISTS t_ok (x String) ENGINE = Log;")
    assert apply_migrations(client, ddl) == ["031_broken.sql"]
    assert apply_migrations(client, ddl) == []


def test_changed_applied_file_is_refused(client: Client, tmp_path: Path) -> None:
    ddl = tmp_path / "ddl"
    ddl.mkdir()
    (ddl / "905_x.sql").write_text("CREATE TABLE IF NOT EXISTS t_x (x UInt8) ENGINE = Log;")
    assert apply_migrations(client, ddl) == ["905_x.sql"]
    (ddl / "905_x.sql").write_text("CREATE TABLE IF NOT EXISTS t_x (x UInt16) ENGINE = Log;")
    with pytest.raises(MigrationError, match=r"905_x\.sql changed after it was applied"):
        apply_migrations(client, ddl)


def test_a_comment_edit_naming_the_earlier_checksum_is_accepted(
    client: Client, tmp_path: Path
) -> None:
    import hashlib

    ddl = tmp_path / "ddl"
    ddl.mkdir()
    first = "-- a comment\nCREATE TABLE IF NOT EXISTS t_y (x UInt8) ENGINE = Log;\n"
    (ddl / "906_y.sql").write_text(first)
    assert apply_migrations(client, ddl) == ["906_y.sql"]
    earlier = hashlib.sha256(first.encode()).hexdigest()
    edited = f"-- a better comment\n-- earlier checksum: {earlier}\n" + first.split("\n", 1)[1]
    (ddl / "906_y.sql").write_text(edited)
    assert apply_migrations(client, ddl) == []  # accepted, nothing applied again
    (ddl / "906_y.sql").write_text(f"-- earlier checksum: {'0' * 64}\n" + first)
    with pytest.raises(MigrationError, match=r"906_y\.sql changed after it was applied"):
        apply_migrations(client, ddl)


def test_the_shipped_files_accept_warehouses_made_before_their_comments_changed() -> None:
    """001 and 002 once cited a design brief outside the repository; warehouses migrated
    then recorded the checksums their ``-- earlier checksum:`` lines name."""
    by_version = {m.version: m for m in load_migrations(default_ddl_dir())}
    assert len(by_version[1].earlier_checksums) == 1
    assert len(by_version[2].earlier_checksums) == 1


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"initial.sql": "SELECT 1"}, r"initial\.sql: DDL files are named NNN_description\.sql"),
        ({"001_a.sql": "SELECT 1", "1_b.sql": "SELECT 1"}, r"share version 1"),
        ({"003_empty.sql": "-- nothing here;\n"}, r"003_empty\.sql: no SQL statements"),
    ],
)
def test_malformed_directories_name_the_file(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(MigrationError, match=message):
        load_migrations(tmp_path)


def test_missing_directory() -> None:
    with pytest.raises(MigrationError, match="DDL directory not found"):
        load_migrations(Path("/nonexistent/skyloop/ddl"))


def test_repository_ddl_is_found_and_split() -> None:
    migrations = load_migrations()
    assert migrations[0].name == "001_initial.sql"
    assert migrations[0].path.parent == default_ddl_dir()
    assert [s.split()[5] for s in migrations[0].statements] == [
        "images",
        "scores",
        "candidates",
        "control_events",
        "dead_letters",
    ]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"]),
        ("SELECT ';' ; ", ["SELECT ';'"]),
        ("SELECT 'it''s; fine'; SELECT 2;", ["SELECT 'it''s; fine'", "SELECT 2"]),
        ("SELECT 'a\\';b';", ["SELECT 'a\\';b'"]),
        ('SELECT "col;x", `t;y`;', ['SELECT "col;x", `t;y`']),
        ("-- head; comment\nSELECT 1; -- tail; \n", ["SELECT 1"]),
        ("/* a; b */ SELECT /* c; */ 1;", ["SELECT /* c; */ 1"]),
        ("SELECT 1 -- trailing", ["SELECT 1 -- trailing"]),
        ("  ;; -- only comments\n/* ; */", []),
    ],
)
def test_split_statements(sql: str, expected: list[str]) -> None:
    assert split_statements(sql) == expected

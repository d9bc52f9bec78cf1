"""connect() by DSN, and what chdb allows per process (one engine directory at a time)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from processors.core.clickhouse import connect, redact_dsn
from processors.core.exceptions import ConfigError, StackError
from tests.chdb_holder import hold_chdb


def test_chdb_dsn_creates_the_directory_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "a" / "nested" / "ch"
    client = connect(f"chdb://{path}")
    try:
        assert path.is_dir()
        client.command("CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x")
        client.insert("t", [[1], [2]], column_names=["x"])
    finally:
        client.close()
    client = connect(f"chdb://{path}")
    try:
        assert client.command("SELECT sum(x) FROM t") == 3
    finally:
        client.close()


def test_database_is_created_and_used(tmp_path: Path) -> None:
    client = connect(f"chdb://{tmp_path / 'ch'}", database="skyloop_test")
    try:
        assert client.command("SELECT currentDatabase()") == "skyloop_test"
        client.command("CREATE TABLE t (x UInt8) ENGINE = Log")
        assert (
            client.command("SELECT database FROM system.tables WHERE name = 't'") == "skyloop_test"
        )
    finally:
        client.close()


def test_one_chdb_directory_per_process_at_a_time(tmp_path: Path) -> None:
    first = connect(f"chdb://{tmp_path / 'one'}")
    same = connect(f"chdb://{tmp_path / 'one'}/")  # another client on the same engine is fine
    try:
        with pytest.raises(StackError, match="one directory at a time"):
            connect(f"chdb://{tmp_path / 'two'}")
        same.command("CREATE TABLE t (x UInt8) ENGINE = Log")
        assert first.command("EXISTS TABLE t") == 1
    finally:
        same.close()
        first.close()
    second = connect(f"chdb://{tmp_path / 'two'}")  # all closed: the process may switch
    second.close()


def test_another_process_cannot_open_a_directory_in_use(tmp_path: Path) -> None:
    path = tmp_path / "ch"
    client = connect(f"chdb://{path}")
    try:
        script = textwrap.dedent(
            f"""
            from processors.core.clickhouse import connect
            from processors.core.exceptions import StackError
            try:
                connect("chdb://{path}")
            except StackError as exc:
                print("refused:", exc)
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert out.startswith("refused: cannot open chdb at")
    finally:
        client.close()


@pytest.mark.parametrize(
    "dsn",
    [
        "postgres://u:p@host/db",
        "clickhouse://host:9000",
        "chdb://relative/path",
        "chdb:relative",
        "chdb:///tmp/x?database=y",
        "/tmp/just/a/path",
        "",
    ],
)
def test_other_dsns_name_the_accepted_forms(dsn: str) -> None:
    with pytest.raises(ConfigError, match=r"chdb:///absolute/path, http://"):
        connect(dsn)


def test_errors_and_logs_hide_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        connect("tcp://admin:hunter2@db:9000/x")
    assert "hunter2" not in str(info.value)
    assert redact_dsn("https://admin:hunter2@db:8443/x") == "https://admin:***@db:8443/x"
    assert redact_dsn("chdb:///data/ch") == "chdb:///data/ch"


def test_http_dsn_goes_to_the_server_client() -> None:
    # nothing listens on port 1: the HTTP client is built and fails to reach it
    with pytest.raises(OperationalError):
        connect("http://default:secret@127.0.0.1:1/default")


def test_a_wait_outlasts_another_process_holding_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "ch"
    child = hold_chdb(path, 2.0)
    try:
        with pytest.raises(StackError, match="cannot open chdb"):
            connect(f"chdb://{path}")  # no wait: refused at once, as before
        client = connect(f"chdb://{path}", wait_s=60.0)
        try:
            assert client.command("SELECT 1") == 1
        finally:
            client.close()
    finally:
        child.wait(timeout=60)


def test_a_wait_that_runs_out_says_how_long_it_asked(tmp_path: Path) -> None:
    path = tmp_path / "ch"
    child = hold_chdb(path, 10.0)
    try:
        with pytest.raises(StackError, match=r"asked for 1 s"):
            connect(f"chdb://{path}", wait_s=1.0)
    finally:
        child.kill()
        child.wait(timeout=60)

"""A run's report waits for a moment's hold on its chdb files instead of failing the run."""

from __future__ import annotations

from pathlib import Path

from processors.core.clickhouse import connect
from processors.core.config import Settings
from processors.report.run_report import report_run
from processors.sink.migrations import apply_migrations
from tests.chdb_holder import hold_chdb
from tests.report.conftest import build_dataset, load


def test_the_report_waits_while_a_query_holds_the_run_s_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    client = connect(f"chdb://{run_dir / 'clickhouse'}")
    try:
        apply_migrations(client)
        load(client, build_dataset())
    finally:
        client.close()
    holder = hold_chdb((run_dir / "clickhouse").resolve(), 2.0)
    try:
        report = report_run(run_dir, Settings(), finished=True)
    finally:
        holder.wait(timeout=60)
    assert report.path.is_file() and report.counts

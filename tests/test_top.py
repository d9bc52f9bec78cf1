"""``skyloop top`` and ``skyloop sql --format csv`` on a run's chdb, seeded by the real writer."""

from __future__ import annotations

import csv
import doctest
import io
from pathlib import Path

import pytest

import processors.top
from processors.cli import main
from processors.core.clickhouse import connect
from processors.sink.migrations import apply_migrations
from processors.sink.writer import ClickHouseWriter
from processors.top import SourceRates, SourceTotals, rates
from tests.sink.conftest import dead_letter, image, roundtrip, score


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder whose ClickHouse holds 3 synth images (2 scored, 1 flagged), 1 ztf image
    and a ztf dead letter."""
    client = connect(f"chdb://{tmp_path / 'clickhouse'}")
    try:
        apply_migrations(client)
        writer = ClickHouseWriter(client)
        images = [image("synth", n) for n in range(3)] + [image("ztf", 9)]
        writer.insert("images.raw", [(img, 0, n) for n, img in enumerate(images)])
        scores = [
            roundtrip(
                {**score(images[n]["image_id"]), "is_candidate": n == 0}, "skyloop.ScoreRecord"
            )
            for n in range(2)
        ]
        writer.insert("scores", [(s, 0, n) for n, s in enumerate(scores)])
        letter = roundtrip({**dead_letter(3), "source": "ztf"}, "skyloop.DeadLetter")
        writer.insert("images.dlq", [(letter, 0, 0)])
    finally:
        client.close()
    return tmp_path


def test_top_shows_totals_and_rates_per_source(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["top", "--run", str(run_dir), "--count", "1", "--interval", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("skyloop top: ")
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert set(rows) == {"synth", "ztf"}
    # nothing arrived between the two reads: rates 0; totals and flag rate from the warehouse
    assert rows["synth"][1:] == ["0.0", "0.0", "0.00", "0.00", "3", "2", "50.0%", "0"]
    assert rows["ztf"][1:] == ["0.0", "0.0", "0.00", "0.00", "1", "0", "0.0%", "1"]


def test_rates_are_increases_per_second() -> None:
    before = {"a": SourceTotals(100, 90, 9, 1)}
    after = {"a": SourceTotals(160, 150, 12, 1), "b": SourceTotals(4, 0, 0, 2)}
    assert rates(before, after, 3.0) == {
        "a": SourceRates(20.0, 20.0, 1.0, 0.0),
        "b": SourceRates(4 / 3, 0.0, 0.0, 2 / 3),
    }
    assert doctest.testmod(processors.top).failed == 0


def test_sql_csv_format_round_trips(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = (
        "SELECT source, count() AS n, 'a,b \"c\"' AS text FROM images FINAL "
        "GROUP BY source ORDER BY source"
    )
    assert main(["sql", "--run", str(run_dir), "--format", "csv", sql]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["source", "n", "text"], ["synth", "3", 'a,b "c"'], ["ztf", "1", 'a,b "c"']]

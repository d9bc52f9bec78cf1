from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from processors.core.clickhouse import Client
from processors.report.daily import ReportError, generate_report, main, write_report
from processors.report.queries import QUERIES

if TYPE_CHECKING:
    from tests.report.conftest import Dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DAY = date(2025, 3, 14)  # the day the dataset fixture fills


def _section(markdown: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def _table(section: str) -> dict[str, list[str]]:
    """First cell → the other cells, for the rows of the section's first table (header too)."""
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows[cells[0]] = cells[1:]
        elif rows and not line.startswith("|"):
            break
    return rows


def _valid_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


def test_report_figures_match_the_data(client: Client, dataset: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    assert dataset.day == DAY
    summary = generate_report(client, out, day=DAY, title="Night of pi")
    md = summary.path.read_text()
    assert summary.path == out / "report-2025-03-14.md"
    assert md.startswith("# Night of pi — 2025-03-14\n")

    images = dataset.of_day("images.raw", "fetched_at")
    scores = dataset.of_day("scores", "scored_at")
    production = [s for s in scores if s["role"] == "production"]
    flagged = [s for s in production if s["is_candidate"]]
    expected = {
        "Images ingested": (len(images), len(dataset.messages["images.raw"])),
        "Score rows (all roles)": (len(scores), len(dataset.messages["scores"])),
        "Images scored (production)": (len(production), len(production) + 1),
        "Flagged by the ensemble (production)": (len(flagged), len(flagged) + 1),
        "Candidates (detector output)": (2, 2),
        "Control events": (1, 1),
        "Dead letters": (3, 3),
    }
    summary_table = _table(_section(md, "Summary"))
    for label, (day_count, total) in expected.items():
        assert summary_table[label] == [str(day_count), str(total)], label
    # the day's figures are distinct records, as `count() FINAL` counts them
    assert client.command("SELECT count() FROM scores") == 2 * len(dataset.messages["scores"])
    assert (
        client.command("SELECT count() FROM scores FINAL") == expected["Score rows (all roles)"][1]
    )
    assert (summary.images, summary.scores, summary.production_scores, summary.flagged) == (
        len(images),
        len(scores),
        len(production),
        len(flagged),
    )
    assert (summary.candidates, summary.control_events, summary.dead_letters) == (2, 1, 3)
    assert summary.sources == 2
    assert str(len(images)) in summary.headline()

    sources = _table(_section(md, "Sources"))
    for source in ("synth-a", "ztf-public"):
        mine = [s for s in production if s["source"] == source]
        lat = sorted(dataset.latency[source])
        n_flagged = sum(s["is_candidate"] for s in mine)
        row = sources[source]
        assert row[:3] == [
            str(sum(i["source"] == source for i in images)),
            str(len(mine)),
            str(n_flagged),
        ]
        assert row[3] == f"{100 * n_flagged / len(mine):.1f}%"
        assert row[5] == f"{np.mean(lat):.1f}"
        assert row[6] == f"{lat[int(0.95 * len(lat))]:.1f}"  # quantileExact: element floor(q*n)
        assert row[8] == "0"  # every score of the fixture is calibrated
    assert sources["synth-a"][4] == "2"  # detector candidates
    assert sources["synth-a"][7] == "1"  # dead letter keyed by one of its images
    assert sources["ztf-public"][7] == "1"  # original topic source:ztf-public
    assert sources["(unattributed)"][7] == "1"

    truth = _table(_section(md, "Detection quality against ground truth"))
    verdict = {s["image_id"]: s["is_candidate"] for s in production}
    pairs = [(dataset.truth[i], verdict[i]) for i in dataset.truth]
    tp = sum(t and p for t, p in pairs)
    fp = sum(p and not t for t, p in pairs)
    fn = sum(t and not p for t, p in pairs)
    tn = sum(not t and not p for t, p in pairs)
    assert truth["synth-a"] == [
        str(tp),
        str(fp),
        str(fn),
        str(tn),
        f"{tp / (tp + fp):.3f}",
        f"{tp / (tp + fn):.3f}",
        f"{fp / (fp + tn):.3f}",
    ]
    assert "ztf-public" not in truth  # no ground truth there

    assert summary.plots == tuple(
        out / f"report-2025-03-14-{name}.png"
        # thresholds: the day's one calibration
        for name in ("decisions", "throughput", "flag-rate", "rate", "thresholds")
    )
    for plot in summary.plots:
        width, height = _valid_png(plot)
        assert width > 300 and height > 200
        assert f"]({plot.name})" in md

    candidates = _section(md, "Top candidates")
    assert len(summary.thumbnails) == len(flagged)  # all decodable, NaN rows included
    for thumb in summary.thumbnails:
        assert max(_valid_png(thumb)) == 96
        assert f"(report-2025-03-14-thumbs/{thumb.name})" in candidates
    assert "gaia:G0" in candidates and "pseudo_label" in candidates
    assert "anomaly (blob)" in candidates and "normal" in candidates

    ztf = _table(_section(md, "ZTF objects"))
    assert ztf["ZTF25aaaaaaa"][:3] == ["3", "150.10002", "2.20000"]
    assert ztf["ZTF25aaaaaaa"][4:6] == ["18.30", "0.80"]
    assert ztf["ZTF25aaaaaab"][0] == "1"
    assert ztf["ZTF25aaaaaaa"][3].startswith("10:00:24")

    control = _section(md, "Control events")
    assert "| 2025-03-14 08:00:00 | calibration.updated | synth-a | controller |" in control
    assert "reason=drift" in control and "target_fpr=0.01" in control and "psi=0.31" in control

    dead = _table(_section(md, "Dead letters"))
    assert dead["BadImageError"][:3] == ["score", "images.raw", "2"]
    assert dead["BadImageError"][5].startswith("image has no finite pixel values \\| offset 41")
    assert dead["SourceError"][:3] == ["ingest", "source:ztf-public", "1"]


def test_report_is_rewritten_in_place(client: Client, dataset: Dataset, tmp_path: Path) -> None:
    first = generate_report(client, tmp_path, day=DAY)
    stale = tmp_path / "report-2025-03-14-thumbs" / "stale.png"
    stale.write_bytes(b"x")
    second = generate_report(client, tmp_path, day=DAY)
    assert first.path == second.path and first.thumbnails == second.thumbnails
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.glob("report-*.md")) == ["report-2025-03-14.md"]


def test_other_days_are_left_out(client: Client, dataset: Dataset, tmp_path: Path) -> None:
    day_before = DAY - timedelta(days=1)
    summary = generate_report(client, tmp_path, day=day_before)
    assert (summary.images, summary.production_scores, summary.flagged) == (1, 1, 1)
    assert summary.dead_letters == summary.control_events == 0
    md = summary.path.read_text()
    assert "No control events this day." in md and "No dead letters this day." in md
    # its cutout cannot be decoded: the report says so instead of failing
    assert "undecodable" in _section(md, "Top candidates")
    assert "## ZTF objects" not in md and "## Detection quality" not in md


def test_empty_database_gives_a_report_that_says_so(client: Client, tmp_path: Path) -> None:
    path = write_report(client, tmp_path, day=DAY)
    md = path.read_text()
    assert "**No data for this day.** The warehouse is empty." in md
    assert _table(_section(md, "Summary"))["Images ingested"] == ["0", "0"]
    for line in (
        "No source produced images",
        "No production scores this day.",
        "No image was flagged",
        "No control events this day.",
        "No dead letters this day.",
    ):
        assert line in md
    assert list(tmp_path.glob("*.png")) == []


def test_unmigrated_database_is_refused(tmp_path: Path) -> None:
    from processors.core.clickhouse import connect

    client = connect(f"chdb://{tmp_path / 'bare'}")
    try:
        with pytest.raises(ReportError, match="lacks tables images, scores"):
            write_report(client, tmp_path / "out", day=DAY)
    finally:
        client.close()


def test_every_query_runs_on_the_schema(client: Client, corrections: Dataset) -> None:
    """The dashboards' contract: each query runs with the documented parameters (on data that
    gives every query rows: an empty result names no columns)."""
    from datetime import UTC, datetime

    from tests.report.conftest import NOON, Dataset, _image, _score, load

    uncalibrated = Dataset()  # one score before its source's first calibration
    img = uncalibrated.add("images.raw", _image("synth-a", b"raw", "png", (1, 1, 1)))
    uncalibrated.add("scores", _score(img, 0, flagged=False, latency=1.0) | {"calibrated": False})
    load(client, uncalibrated)
    assert img["fetched_at"] == NOON
    start = datetime(2025, 3, 14, tzinfo=UTC)
    params = {
        "start": start,
        "end": start + timedelta(days=1),
        "limit": 5,
        "bins": 10,
        "window": 4,
        "bin_s": 60,
    }
    for name, sql in QUERIES.items():
        result = client.query(sql, parameters=params, column_formats={"pixels": "bytes"})
        assert result.column_names, name
    hist = client.query(QUERIES["score_histogram"], parameters=params).result_rows
    assert all(0 <= row[2] < 10 for row in hist)
    assert sum(row[3] for row in hist) == 12


def test_main_prints_the_headline(
    client: Client, dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"chdb://{tmp_path / 'ch'}"
    client.close()  # the CLI opens the path itself
    assert main(["--dsn", dsn, "--out", str(tmp_path / "cli"), "--day", "2025-03-14"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2025-03-14: 12 images, 12 scored (14 score rows), 4 flagged")
    assert (tmp_path / "cli" / "report-2025-03-14.md").is_file()


def test_dead_letters_are_attributed_to_the_source_they_name(
    client: Client, dataset: Dataset, tmp_path: Path
) -> None:
    """DeadLetter.source, when set, wins over the original topic and the key."""
    from processors.sink.writer import ClickHouseWriter

    synth_image = next(
        r["image_id"] for r in dataset.messages["images.raw"] if r["source"] == "synth-a"
    )
    at = dataset.messages["images.dlq"][0]["at"]
    named = [
        ("scores", b"no-such-image", "synth-a"),  # unattributed without the column
        ("images.raw", synth_image.encode(), "ztf-public"),  # the column beats the key
    ]
    ClickHouseWriter(client).insert(
        "images.dlq",
        [
            (
                dataset.add(
                    "images.dlq",
                    {
                        "original_topic": topic,
                        "partition": 0,
                        "offset": 900 + n,
                        "key": key,
                        "raw": b"\x01" * 4,
                        "error_class": "CodecError",
                        "message": "named",
                        "processor": "detect",
                        "at": at,
                        "source": source,
                    },
                ),
                0,
                5000 + n,
            )
            for n, (topic, key, source) in enumerate(named)
        ],
    )
    md = generate_report(client, tmp_path, day=DAY).path.read_text()
    sources = _table(_section(md, "Sources"))
    assert (sources["synth-a"][7], sources["ztf-public"][7]) == ("2", "2")
    assert sources["(unattributed)"][7] == "1"

"""The Self-correction section and the threshold history, on real chdb with the real schema."""

from __future__ import annotations

import doctest
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from processors.core.clickhouse import Client
from processors.report import corrections
from processors.report.corrections import threshold_history
from processors.report.daily import generate_report
from processors.report.queries import THRESHOLD_EVENTS

if TYPE_CHECKING:
    from tests.report.conftest import Dataset

DAY = date(2025, 3, 14)
MIDNIGHT = datetime(2025, 3, 14, tzinfo=UTC)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _section(markdown: str, title: str, level: str = "##") -> str:
    pattern = rf"^{level} {re.escape(title)}\n(.*?)(?=^#{{2,{len(level)}}} |\Z)"
    match = re.search(pattern, markdown, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def _rows(section: str) -> list[list[str]]:
    """The body rows of the section's first table, as cells."""
    table: list[str] = []
    for line in section.splitlines():
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in table[2:]]


def _at(hours: float) -> datetime:
    return MIDNIGHT + timedelta(hours=hours)


def test_doctests() -> None:
    assert doctest.testmod(corrections).failed == 0


def test_section_reports_the_days_corrections(
    client: Client, corrections: Dataset, tmp_path: Path
) -> None:
    summary = generate_report(client, tmp_path, day=DAY)
    md = summary.path.read_text()
    section = _section(md, "Self-correction")
    of_day = corrections.of_day("control.events", "at")
    assert f"{len(of_day)} control events this day, by type and issuer:" in section
    counts = {(r[0], r[1]): r[2] for r in _rows(section)}
    assert counts == {
        ("calibration.updated", "controller"): "3",
        ("decisions.revised", "controller"): "1",
        ("drift.detected", "controller"): "1",  # the next day's drift is left out
        ("pipeline.paused", "controller"): "1",
        ("pipeline.resumed", "controller"): "1",
        ("source.paused", "controller"): "1",
        ("source.resumed", "controller"): "1",
        ("source.weights_set", "controller"): "1",
        ("threshold.decayed", "controller"): "1",
        ("threshold.set", "operator"): "1",
    }

    drift = _rows(_section(section, "Drift detections", "###"))
    assert drift == [
        [
            "2025-03-14 02:00:00",
            "synth-a",
            "m1",
            "score distribution, flag flood",
            "0.0004",
            "0.410",
            "19.0% vs 1.2%",
        ]
    ]

    revisions = _rows(_section(section, "Revisions since a change point", "###"))
    assert revisions == [["2025-03-14 02:00:30", "synth-a", "m1", "1", "120", "23 → 5", "19", "1"]]

    calibrations = _rows(_section(section, "Calibrations", "###"))
    assert [r[:4] + r[6:] for r in calibrations] == [
        ["synth-a", "—", "1", "drift 1", "0.900"],  # the fixture's model-less calibration
        ["synth-a", "m1", "1", "drift 1", "0.930"],  # the day before's initial one is left out
        ["ztf-public", "m1", "1", "initial 1", "0.800"],
    ]

    pauses = _rows(_section(section, "Pauses and resumes", "###"))
    assert [r[1:] for r in pauses] == [
        [
            "source.paused",
            "ztf-public",
            "controller",
            "dead-letter rate 0.50",
            "2025-03-14 05:30:00",
        ],
        ["source.resumed", "ztf-public", "controller", "back-off ended", "—"],
        ["pipeline.paused", "pipeline", "controller", "latency p99", "2025-03-14 06:10:00"],
        ["pipeline.resumed", "pipeline", "controller", "probation after health pause", "—"],
    ]

    figure = tmp_path / "report-2025-03-14-thresholds.png"
    assert figure in summary.plots
    assert figure.read_bytes()[:8] == PNG_MAGIC
    with Image.open(figure) as img:
        assert img.size[0] > 300
    assert f"]({figure.name})" in _section(section, "Threshold history", "###")
    # the section sits between the day's detections and the full audit trail
    assert (
        md.index("## ZTF objects") < md.index("## Self-correction") < md.index("## Control events")
    )


def test_threshold_history_is_the_control_state_fold(client: Client, corrections: Dataset) -> None:
    rows = client.query(THRESHOLD_EVENTS, parameters={"end": MIDNIGHT + timedelta(days=1)})
    events = [dict(zip(rows.column_names, row, strict=True)) for row in rows.result_rows]
    history = threshold_history(events, MIDNIGHT)
    assert history == {
        # calibrated the day before at 0.90: carried in at midnight; decay; recalibration after
        # the drift (max of its thresholds); then the operator's model-less knn 0.95 wins
        ("synth-a", "m1"): [
            (_at(0), 0.9),
            (_at(1), 0.87),
            (_at(2 + 1 / 3600), 0.93),
            (_at(3), 0.95),
        ],
        # a calibration without a model version: the operator's override applies to it too
        ("synth-a", ""): [(_at(8), 0.95)],
        ("ztf-public", "m1"): [(_at(4), 0.8)],
    }
    # the day before: the initial calibration is the only change
    before = threshold_history(
        [e for e in events if e["at"] < MIDNIGHT.replace(tzinfo=None)], MIDNIGHT - timedelta(days=1)
    )
    assert before == {("synth-a", "m1"): [(_at(-4), 0.9)]}
    # nothing changed in a window after the last event: nothing to draw
    assert threshold_history(events, MIDNIGHT + timedelta(days=1)) == {}


def test_operator_override_without_calibration_is_its_own_lane() -> None:
    rows = [
        {
            "at": _at(1),
            "type": "threshold.set",
            "subject": "sky",
            "issued_by": "operator",
            "params": '{"detector":"knn","value":0.97}',
            "caused_by": [],
            "event_id": "o",
        }
    ]
    assert threshold_history(rows, MIDNIGHT) == {("sky", "*"): [(_at(1), 0.97)]}


def test_empty_window_says_so_in_one_line(
    client: Client, corrections: Dataset, tmp_path: Path
) -> None:
    # two days before: no control events, so no section body and no figure (a stale one goes)
    stale = tmp_path / "report-2025-03-12-thresholds.png"
    stale.write_bytes(PNG_MAGIC)
    summary = generate_report(client, tmp_path, day=DAY - timedelta(days=2))
    section = _section(summary.path.read_text(), "Self-correction")
    assert section.strip() == "No control events this day, so no self-correction."
    assert not stale.exists() and summary.plots == ()


def test_day_without_drift_says_so(client: Client, corrections: Dataset, tmp_path: Path) -> None:
    # the day before holds one calibration, and no drift
    md = generate_report(client, tmp_path, day=DAY - timedelta(days=1)).path.read_text()
    section = _section(md, "Self-correction")
    assert "No drift detected this day." in section
    assert "### Pauses and resumes" not in section
    assert "report-2025-03-13-thresholds.png" in section

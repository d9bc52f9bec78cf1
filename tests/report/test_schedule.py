"""The run-time report policy: periodic cadence and interim reports on pipeline pauses."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest

from processors.report import schedule
from processors.report.schedule import ReportSchedule, interim_report_for, report_stem

T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


def test_doctests() -> None:
    result = doctest.testmod(schedule)
    assert result.attempted > 0 and result.failed == 0


def test_due_at_most_once_per_interval() -> None:
    interval = 600.0
    cadence = ReportSchedule(interval, started=T0)
    written: list[datetime] = []
    # ask every 7 s for three hours, writing whenever due, as the sink does after each batch
    for step in range(0, 3 * 3600, 7):
        now = T0 + timedelta(seconds=step)
        if cadence.due(now):
            written.append(now)
            cadence.written(now)
    slots = [int((at - T0).total_seconds() // interval) for at in written]
    assert slots == list(range(1, 18))  # one per slot, none in the first, none missed
    assert all(b - a >= timedelta(seconds=interval - 7) for a, b in pairwise(written))


def test_slow_reports_do_not_shift_or_pile_up() -> None:
    cadence = ReportSchedule(60.0, started=T0)
    assert not cadence.due(T0) and not cadence.due(T0 + timedelta(seconds=59.9))
    cadence.written(T0 + timedelta(seconds=61))
    assert cadence.next_due == T0 + timedelta(seconds=120)  # on the grid, not 61 + 60
    # a stall of ten intervals owes one report, then the grid resumes
    assert cadence.due(T0 + timedelta(seconds=700))
    cadence.written(T0 + timedelta(seconds=700))
    assert not cadence.due(T0 + timedelta(seconds=719))
    assert cadence.due(T0 + timedelta(seconds=720))
    # an early write (not due) never moves the next report earlier
    cadence.written(T0 + timedelta(seconds=710))
    assert cadence.next_due == T0 + timedelta(seconds=720)


def test_same_calls_same_answers() -> None:
    def run() -> list[bool]:
        cadence, answers = ReportSchedule(0.5, started=T0), []
        for ms in range(0, 5000, 130):
            now = T0 + timedelta(milliseconds=ms)
            answers.append(cadence.due(now))
            if answers[-1]:
                cadence.written(now)
        return answers

    assert run() == run() and sum(run()) == 9


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        ReportSchedule(interval, started=T0)


def test_interim_report_for_a_pause_decoded_from_the_topic() -> None:
    at = datetime(2026, 12, 2, 10, 31, 7, tzinfo=timezone(timedelta(hours=1)))
    event = {
        "type": "pipeline.paused",
        "at": at,
        "event_id": "e-9",
        "params": {"reason": "error rate 0.40", "until": at + timedelta(days=1), "value": None},
    }
    report = interim_report_for(event)
    assert report is not None
    assert report.stem == "report-20261202T093107Z-paused" == report_stem(at, "paused")
    assert report.note == (
        "Interim report: pipeline paused (error rate 0.40) at 2026-12-02 09:31 UTC, "
        "until 2026-12-03 09:31 UTC"
    )
    assert (report.event_id, report.at) == ("e-9", at.astimezone(UTC))


def test_interim_report_without_reason_or_until() -> None:
    naive = datetime(2026, 12, 2, 10, 31)  # as clickhouse-connect returns UTC columns
    report = interim_report_for(
        {"type": "pipeline.paused", "at": naive, "event_id": "e", "params": "{}"}
    )
    assert report is not None
    assert report.note == "Interim report: pipeline paused at 2026-12-02 10:31 UTC"


@pytest.mark.parametrize(
    "kind", ["pipeline.resumed", "source.paused", "drift.detected", "calibration.updated"]
)
def test_only_pipeline_pauses_call_for_an_interim_report(kind: str) -> None:
    event = {"type": kind, "at": T0, "event_id": "e", "params": {"reason": "x"}}
    assert interim_report_for(event) is None

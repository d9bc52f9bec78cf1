"""When the running pipeline writes a report: on a fixed cadence, and when the pipeline pauses.

Pure policy, no I/O and no clock: callers pass the time, so the same times give the same
answers. Invariants:

- :class:`ReportSchedule` divides time into slots ``[started + k·interval, started +
  (k+1)·interval)`` and is due at most once per slot: after :meth:`ReportSchedule.written` the
  next report is due at the first slot boundary after the write. Slots do not drift with the
  time a report takes, and a long stall owes one report, not one per missed slot.
- :func:`interim_report_for` calls for a report on ``pipeline.paused`` only (ARCHITECTURE.md,
  "Self-correction": a health pause is followed by an interim report). Its stem is named by the
  event's own time, so a redelivered event rewrites the same file instead of adding one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from processors.core.events import EventType
from processors.report.markdown import utc

__all__ = [
    "InterimReport",
    "ReportSchedule",
    "interim_report_for",
    "report_stem",
]


def report_stem(at: datetime, kind: str) -> str:
    """``report-<YYYYMMDDTHHMMSSZ of at, UTC>-<kind>``: the file stem of a run-time report.

    >>> from datetime import UTC
    >>> report_stem(datetime(2026, 12, 2, 10, 31, 5, 900000, tzinfo=UTC), "paused")
    'report-20261202T103105Z-paused'
    """
    return f"report-{utc(at):%Y%m%dT%H%M%SZ}-{kind}"


class ReportSchedule:
    """The periodic report cadence: due once per ``interval_s`` slot, counted from ``started``.

    Times are aware datetimes. Example (hourly):

    >>> from datetime import UTC
    >>> t0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    >>> schedule = ReportSchedule(3600.0, started=t0)
    >>> schedule.due(t0 + timedelta(minutes=59)), schedule.due(t0 + timedelta(minutes=61))
    (False, True)
    >>> schedule.written(t0 + timedelta(minutes=61))
    >>> schedule.due(t0 + timedelta(minutes=119)), schedule.due(t0 + timedelta(minutes=120))
    (False, True)
    >>> schedule.written(t0 + timedelta(hours=5, minutes=30))  # a stall: one report owed
    >>> schedule.next_due == t0 + timedelta(hours=6)
    True
    """

    def __init__(self, interval_s: float, started: datetime) -> None:
        if not interval_s > 0:
            raise ValueError(f"report interval_s must be > 0, got {interval_s!r}")
        self.interval = timedelta(seconds=interval_s)
        self.started = started
        self.next_due = started + self.interval

    def due(self, now: datetime) -> bool:
        """Whether the periodic report of the slot holding ``now`` is still to be written."""
        return now >= self.next_due

    def written(self, now: datetime) -> None:
        """Record a report written at ``now``: the next is due at the next slot boundary."""
        slots = max((now - self.started) // self.interval, 0)
        self.next_due = max(self.next_due, self.started + (slots + 1) * self.interval)


@dataclass(frozen=True)
class InterimReport:
    """A report that a control event calls for: its file stem, the note under its title, and
    the time whose UTC day it covers."""

    event_id: str
    at: datetime
    stem: str
    note: str


def interim_report_for(event: Mapping[str, Any]) -> InterimReport | None:
    """The interim report a stored control event calls for, or None.

    ``event`` has ``type``, ``at``, ``event_id`` and ``params``: a mapping as decoded from the
    topic, or the JSON string stored in ClickHouse. Only ``pipeline.paused`` calls for one.

    >>> from datetime import UTC
    >>> at = datetime(2026, 12, 2, 10, 31, tzinfo=UTC)
    >>> until = '{"reason": "latency p99", "until": "2026-12-02T10:41:00.000Z"}'
    >>> report = interim_report_for(
    ...     {"type": "pipeline.paused", "at": at, "event_id": "e1", "params": until})
    >>> report.stem
    'report-20261202T103100Z-paused'
    >>> report.note
    'Interim report: pipeline paused (latency p99) at 2026-12-02 10:31 UTC, until 10:41 UTC'
    >>> interim_report_for({"type": "pipeline.resumed", "at": at, "event_id": "e2", "params": {}})
    """
    if event["type"] != EventType.PIPELINE_PAUSED:
        return None
    at = utc(event["at"])
    params = event.get("params") or {}
    if isinstance(params, str):
        params = json.loads(params) if params else {}
    reason = params.get("reason")
    note = "Interim report: pipeline paused" + (f" ({reason})" if reason else "")
    note += f" at {at:%Y-%m-%d %H:%M} UTC"
    until = params.get("until")
    if until is not None:
        end = utc(until if isinstance(until, datetime) else datetime.fromisoformat(until))
        shown = f"{end:%H:%M}" if end.date() == at.date() else f"{end:%Y-%m-%d %H:%M}"
        note += f", until {shown} UTC"
    return InterimReport(
        event_id=str(event["event_id"]), at=at, stem=report_stem(at, "paused"), note=note
    )

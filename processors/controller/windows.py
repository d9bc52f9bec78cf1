"""Tumbling windows of lane statistics: closed windows go to the ``lane_windows`` table.

Each lane (a source and a model) counts what it scored and flagged in the current window of
``stats_window_s``; the first score of a new window closes the old one, writing it as JSON to
the table under ``<source>|<model>|<window start>`` on the source's partition. A lane keeps the
last :data:`WINDOWS_KEPT` closed windows; older ones are deleted from the table, so it stays
bounded. Idempotent per score: a score in the current window changes nothing here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime

from processors.controller.state import SourceState, StatsWindow
from processors.controller.tables import ChangelogTable
from processors.core.metrics import FLAG_RATE
from processors.core.records import ScoreRecord

__all__ = ["WINDOWS_KEPT", "roll_window"]

WINDOWS_KEPT = 60


def roll_window(
    windows: ChangelogTable, src: SourceState, score: ScoreRecord, partition: int, size_s: float
) -> None:
    """Close the lane's tumbling stats window when ``score`` starts a new one."""
    at = score["scored_at"].timestamp()
    start = datetime.fromtimestamp(at - at % size_s, UTC).isoformat()
    lane = src.lane(score["model_version"])
    if lane.stats.start == start:
        return
    if lane.stats.scored:
        key = f"{src.source}|{lane.model}|{lane.stats.start}"
        windows.put(key, json.dumps(asdict(lane.stats), sort_keys=True).encode(), partition)
        FLAG_RATE.labels(src.source, lane.model).set(lane.stats.flagged / lane.stats.scored)
        lane.windows = [*lane.windows, lane.stats.start]
        while len(lane.windows) > WINDOWS_KEPT:
            old = lane.windows.pop(0)
            windows.delete(f"{src.source}|{lane.model}|{old}", partition)
    lane.stats = StatsWindow(start=start)

"""``skyloop top``: live per-source rates of a run, from its ClickHouse.

Each refresh reads the per-source totals of the hourly aggregates (migration 003:
images fetched, production scores, flags, dead letters), through the running sink's SQL
endpoint (or the chdb files when no sink runs), and shows the rate of each since the previous
refresh. Reading totals rather than a time window makes the rates exact over any refresh
interval and cheap: the aggregate tables hold one row per source and hour.

>>> prev = {"ztf": SourceTotals(10, 10, 1, 0)}
>>> cur = {"ztf": SourceTotals(30, 25, 3, 1)}
>>> rates(prev, cur, 2.0)["ztf"]
SourceRates(images_s=10.0, scored_s=7.5, flags_s=1.0, dead_letters_s=0.5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["TOTALS_SQL", "SourceRates", "SourceTotals", "rates", "render", "totals"]

TOTALS_SQL = """
SELECT source, sum(images) AS images, sum(scored) AS scored, sum(flags) AS flags,
       sum(dead_letters) AS dead_letters
FROM hourly_source_stats
GROUP BY source
ORDER BY source
"""


class SourceTotals(NamedTuple):
    images: int
    scored: int
    flags: int
    dead_letters: int


class SourceRates(NamedTuple):
    images_s: float
    scored_s: float
    flags_s: float
    dead_letters_s: float


def totals(rows: Sequence[Sequence[Any]]) -> dict[str, SourceTotals]:
    """Rows of :data:`TOTALS_SQL` by source (``''`` = dead letters of no known source)."""
    return {str(r[0]): SourceTotals(*(int(v) for v in r[1:5])) for r in rows}


def rates(
    previous: Mapping[str, SourceTotals], current: Mapping[str, SourceTotals], seconds: float
) -> dict[str, SourceRates]:
    """Per-second increase of every total since ``previous`` (a new source starts at 0)."""
    zero = SourceTotals(0, 0, 0, 0)
    span = max(seconds, 1e-9)
    return {
        source: SourceRates(
            *(max(0, c - p) / span for c, p in zip(now, previous.get(source, zero), strict=True))
        )
        for source, now in current.items()
    }


def render(current: Mapping[str, SourceTotals], per_second: Mapping[str, SourceRates]) -> str:
    """One screen: a line per source with its rates, totals and flag rate."""
    header = (
        f"{'source':<16} {'images/s':>9} {'scored/s':>9} {'flags/s':>8} {'dlq/s':>7} "
        f"{'images':>9} {'scored':>9} {'flag rate':>9} {'dead':>6}"
    )
    lines = [header, "-" * len(header)]
    for source in sorted(current):
        t, r = current[source], per_second.get(source, SourceRates(0, 0, 0, 0))
        flag_rate = t.flags / t.scored if t.scored else 0.0
        lines.append(
            f"{source or '(unknown)':<16} {r.images_s:>9.1f} {r.scored_s:>9.1f} "
            f"{r.flags_s:>8.2f} {r.dead_letters_s:>7.2f} {t.images:>9} {t.scored:>9} "
            f"{flag_rate:>9.1%} {t.dead_letters:>6}"
        )
    return "\n".join(lines)

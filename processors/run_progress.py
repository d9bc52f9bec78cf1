"""What ``skyloop run`` shows while it runs: per-stage totals, rates, what each stage is behind,
and the time left.

On a terminal, a live table (rich) redrawn twice a second; otherwise (a log, CI) one plain line
every ``interval_s`` seconds. Rates are over the last ``window_s`` seconds, so a stalled stage
shows 0/s within that window. A stage's "behind" is what the stage before it handed over and it
has not handled yet. The time left, with a known number of images, is what the last stage (the
store) has left over its rate; with a duration, the ingest time left plus the store's backlog
over its rate; unknown (``-``) while the store has no rate yet.

Invariants: counts come from the workers' progress files, which restart from zero with their
process; :class:`Totals` carries them across restarts (a count that goes down is a new process,
its count added to what the dead one had reached), so totals and rates never go backwards.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = [
    "STAGES",
    "Counts",
    "Rates",
    "RunProgress",
    "Totals",
    "eta_s",
    "plain_line",
    "short_duration",
    "start_live",
]

STAGES = ("ingest", "score", "store")
"""The stages shown, in pipeline order; each is behind the one before it."""


@dataclass(frozen=True)
class Counts:
    """One reading of the run: items handled per stage and the run-wide counters."""

    ingest: int = 0
    """Items read from the sources: images published and items dead-lettered at the source."""
    score: int = 0
    """Messages of ``images.raw`` the scorer handled (scored or dead-lettered)."""
    store: int = 0
    """The scorer's outputs the sink stored (served scores and image dead letters)."""
    candidates: int = 0
    dead_letters: int = 0
    control_events: int = 0
    paused: bool = False
    published: int | None = None
    """Images ingest handed to the scorer (default: every item ingested)."""

    def stage(self, name: str) -> int:
        return int(getattr(self, name))

    def handed(self, name: str) -> int:
        """What stage ``name`` handed to the next one."""
        if name == "ingest" and self.published is not None:
            return self.published
        return self.stage(name)


@dataclass
class Totals:
    """Per-worker counts made restart-proof: a reading below the last one is a new process.

    >>> t = Totals()
    >>> [t.add("score", n) for n in (10, 40, 5, 20)]
    [10, 40, 45, 60]
    """

    _base: dict[str, int] = field(default_factory=dict)
    _last: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, reading: int) -> int:
        last = self._last.get(key, 0)
        if reading < last:  # the worker restarted: its count began again from zero
            self._base[key] = self._base.get(key, 0) + last
        self._last[key] = reading
        return self._base.get(key, 0) + reading


class Rates:
    """Per-second rates of a reading's counts (its attributes, by name) over a sliding window
    of readings; also the replay's (:mod:`processors.replay_progress`)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, Any]] = deque()

    def add(self, now: float, reading: Any) -> None:
        self._samples.append((now, reading))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def clear(self) -> None:
        """Forget every reading (counts that start again from zero)."""
        self._samples.clear()

    def per_second(self, name: str) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        moved = max(int(getattr(last, name)) - int(getattr(first, name)), 0)
        return moved / (t1 - t0) if t1 > t0 else 0.0


def start_live(out: TextIO, live: bool | None) -> Any:
    """A started rich live display on ``out`` when ``live`` (default: ``out`` is a terminal),
    else None."""
    if not (live if live is not None else out.isatty()):
        return None
    from rich.console import Console
    from rich.live import Live

    display = Live(console=Console(file=out, force_terminal=True), refresh_per_second=2)
    display.start()
    return display


def eta_s(
    total: int | None, counts: Counts, store_rate: float, ingest_left_s: float | None
) -> float | None:
    """Seconds left: see the module docstring. None when it cannot be told yet.

    >>> eta_s(1000, Counts(ingest=600, store=400), 50.0, None)
    12.0
    >>> eta_s(None, Counts(ingest=600, store=400), 50.0, 30.0), eta_s(1000, Counts(), 0.0, None)
    (34.0, None)
    """
    if store_rate <= 0:
        return None
    done = counts.store + counts.ingest - counts.handed("ingest")  # + source dead letters
    if total is not None:
        return max(total - done, 0) / store_rate
    if ingest_left_s is not None:
        return max(ingest_left_s, 0.0) + max(counts.ingest - done, 0) / store_rate
    return None


def short_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``7s``; ``-`` for None (not known)."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m"
        if hours
        else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")
    )


def _behind(counts: Counts, stage: str) -> int:
    index = STAGES.index(stage)
    if index == 0:
        return 0
    return max(counts.handed(STAGES[index - 1]) - counts.stage(stage), 0)


def plain_line(
    counts: Counts,
    rates: Mapping[str, float],
    elapsed_s: float,
    total: int | None,
    eta: float | None,
) -> str:
    """The one-line form (no terminal): every stage with its rate, then the counters.

    >>> line = plain_line(Counts(ingest=90, score=80, store=70, candidates=4), {"ingest": 30.0,
    ...     "score": 28.0, "store": 25.5}, 12.3, 100, 61.2)
    >>> line.split(" | ")[:3]
    ['[  12.3s] ingest 90/100 30/s', 'score 80 28/s (10 behind)', 'store 70 26/s (10 behind)']
    >>> line.split(" | ")[3]
    'candidates 4  dead letters 0  control events 0  left 1m01s'
    """
    of_total = f"/{total}" if total is not None else ""
    parts = []
    for stage in STAGES:
        behind = _behind(counts, stage)
        lag = f" ({behind} behind)" if behind else ""
        shown = f"{counts.stage(stage)}{of_total if stage == 'ingest' else ''}"
        parts.append(f"{stage} {shown} {rates.get(stage, 0.0):.0f}/s{lag}")
    paused = "  PAUSED" if counts.paused else ""
    return (
        f"[{elapsed_s:6.1f}s] "
        + " | ".join(parts)
        + f" | candidates {counts.candidates}  dead letters {counts.dead_letters}"
        + f"  control events {counts.control_events}  left {short_duration(eta)}{paused}"
    )


class RunProgress:
    """Shows a run's progress on ``out``: live on a terminal, plain lines otherwise."""

    def __init__(
        self,
        out: TextIO,
        total: int | None,
        *,
        live: bool | None = None,
        interval_s: float = 5.0,
        window_s: float = 10.0,
    ) -> None:
        self.out = out
        self.total = total
        self.interval_s = interval_s
        self._rates = Rates(window_s)
        self._last_line: float | None = None
        self._live: Any = start_live(out, live)

    def show(
        self, now: float, elapsed_s: float, counts: Counts, ingest_left_s: float | None = None
    ) -> None:
        """Take one reading (``now``: a monotonic clock) and show it when due."""
        self._rates.add(now, counts)
        rates = {stage: self._rates.per_second(stage) for stage in STAGES}
        eta = eta_s(self.total, counts, rates["store"], ingest_left_s)
        if self._live is not None:
            self._live.update(self._table(counts, rates, elapsed_s, eta))
        elif self._last_line is None or now - self._last_line >= self.interval_s:
            self.out.write(plain_line(counts, rates, elapsed_s, self.total, eta) + "\n")
            self.out.flush()
            self._last_line = now

    def close(self) -> None:
        """Stop the live display (its last frame stays on the terminal)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _table(
        self, counts: Counts, rates: Mapping[str, float], elapsed_s: float, eta: float | None
    ) -> Any:
        from rich.table import Table

        title = f"skyloop run  {short_duration(elapsed_s)} elapsed, {short_duration(eta)} left"
        table = Table(
            title=title + ("  [bold red]PAUSED[/]" if counts.paused else ""), min_width=64
        )
        for column in ("stage", "done", "per second", "behind"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for stage in STAGES:
            done = f"{counts.stage(stage)}" + (
                f" / {self.total}" if stage == "ingest" and self.total is not None else ""
            )
            behind = _behind(counts, stage)
            table.add_row(stage, done, f"{rates[stage]:.1f}", str(behind) if behind else "")
        table.caption = (
            f"candidates {counts.candidates}   dead letters {counts.dead_letters}   "
            f"control events {counts.control_events}"
        )
        return table

"""What ``skyloop replay`` shows while it runs: records read, replayed and skipped, their rates,
what is left and the time left, for each of its phases (the hot log, then ClickHouse's cold
tier).

On a terminal, a live table (rich) redrawn twice a second; otherwise (a log, CI) one plain line
every ``interval_s`` seconds. Rates are over the last ``window_s`` seconds. What is left of the
hot log is an estimate: the topics' high watermarks when the replay started, less what it has
read (the embedded broker's watermark is short by up to a batch per partition, ARCHITECTURE.md,
"The local stack"), shown with a ``~``; the cold tier's is exact (the stored ids it selected).

Invariant: a reading's counts never go down within a phase (they come from one
:class:`~processors.replay.ReplaySummary`, which only adds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from processors.run_progress import Rates, short_duration, start_live

__all__ = ["ReplayProgress", "ReplayReading", "plain_line", "watching"]


@dataclass(frozen=True)
class ReplayReading:
    """One reading of a replay phase."""

    phase: str
    """``hot log`` or ``ClickHouse``."""
    read: int
    replayed: int
    skipped: int
    total: int | None = None
    """What the phase has to read: exact for the cold tier, an estimate for the hot log."""
    estimated: bool = False

    @property
    def left(self) -> int | None:
        return None if self.total is None else max(self.total - self.read, 0)


def plain_line(
    mode: str, reading: ReplayReading, read_rate: float, replay_rate: float, elapsed_s: float
) -> str:
    """The one-line form.

    >>> line = plain_line("rescore", ReplayReading("hot log", 900, 850, 50, 1200, True), 75.0,
    ...     70.4, 12.3)
    >>> line.split(" | ")[0]
    '[  12.3s] replay rescore, hot log: read 900/~1200 75/s'
    >>> line.split(" | ")[1:]
    ['replayed 850 70/s', 'skipped 50', 'left 4s']
    """
    of = "" if reading.total is None else f"/{'~' if reading.estimated else ''}{reading.total}"
    eta = reading.left / read_rate if reading.left is not None and read_rate > 0 else None
    return (
        f"[{elapsed_s:6.1f}s] replay {mode}, {reading.phase}: read {reading.read}{of} "
        f"{read_rate:.0f}/s | replayed {reading.replayed} {replay_rate:.0f}/s | skipped "
        f"{reading.skipped} | left {short_duration(eta)}"
    )


class ReplayProgress:
    """Shows a replay's progress on ``out``: live on a terminal, plain lines otherwise."""

    def __init__(
        self,
        out: TextIO,
        mode: str,
        *,
        live: bool | None = None,
        interval_s: float = 5.0,
        window_s: float = 10.0,
    ) -> None:
        self.out = out
        self.mode = mode
        self.interval_s = interval_s
        self._rates = Rates(window_s)
        self._last_line: float | None = None
        self._last: tuple[ReplayReading, float, float, float] | None = None
        self._live: Any = start_live(out, live)

    def _rates_of(self, now: float, reading: ReplayReading) -> tuple[float, float]:
        if self._last is not None and self._last[0].phase != reading.phase:
            self._rates.clear()  # a new phase counts from its own start
        self._rates.add(now, reading)
        return self._rates.per_second("read"), self._rates.per_second("replayed")

    def show(self, now: float, elapsed_s: float, reading: ReplayReading) -> None:
        """Take one reading (``now``: a monotonic clock) and show it when due; the first
        reading of a phase is always shown, after the last one of the phase before."""
        if self._last is not None and self._last[0].phase != reading.phase:
            if self._live is None:
                self._line()
            self._last_line = None
        read_rate, replay_rate = self._rates_of(now, reading)
        self._last = (reading, read_rate, replay_rate, elapsed_s)
        if self._live is not None:
            self._live.update(self._table(reading, read_rate, replay_rate, elapsed_s))
        elif self._last_line is None or now - self._last_line >= self.interval_s:
            self._line()
            self._last_line = now

    def note(self, text: str) -> None:
        """A line of its own (above the live table on a terminal)."""
        if self._live is not None:
            self._live.console.print(text, highlight=False, markup=False)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def _line(self) -> None:
        if self._last is not None:
            self.out.write(plain_line(self.mode, *self._last) + "\n")
            self.out.flush()

    def close(self) -> None:
        """Show the last reading (plain lines) or stop the live display (its last frame stays
        on the terminal)."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif self._last is not None and self._last_line is not None:
            self._line()

    def _table(
        self, reading: ReplayReading, read_rate: float, replay_rate: float, elapsed_s: float
    ) -> Any:
        from rich.table import Table

        left = reading.left
        eta = left / read_rate if left is not None and read_rate > 0 else None
        table = Table(
            title=f"skyloop replay {self.mode}  {reading.phase}  {short_duration(elapsed_s)} "
            f"elapsed, {short_duration(eta)} left",
            min_width=64,
        )
        for column in ("", "done", "per second", "left"):
            table.add_column(column, justify="left" if not column else "right")
        estimate = "~" if reading.estimated else ""
        shown_left = "" if left is None else f"{estimate}{left}"
        table.add_row("read", str(reading.read), f"{read_rate:.1f}", shown_left)
        table.add_row("replayed", str(reading.replayed), f"{replay_rate:.1f}", "")
        table.add_row("skipped", str(reading.skipped), "", "")
        return table


@contextmanager
def watching(
    view: ReplayProgress, reading: Callable[[], ReplayReading], started: float
) -> Iterator[None]:
    """Shows ``reading()`` on ``view`` twice a second, from a thread of its own, while the block
    runs, and once more when it ends (``started``: the replay's start, a monotonic time)."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            view.show(time.monotonic(), time.monotonic() - started, reading())
            done.wait(0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)
        view.show(time.monotonic(), time.monotonic() - started, reading())

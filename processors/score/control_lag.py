"""Control lag: the scorer waits while the controller has over ``max_control_lag`` scores unread.

Why: a correction (a refinement, a drift recalibration, a threshold decay) is drawn from the
scores the controller has read, and acts on the images scored after the scorer applies it. When
images arrive far faster than the controller reads scores (a night of alerts replayed at full
speed, a burst after an outage), an unbounded scorer serves hundreds of images under a
calibration the controller has already replaced, and *which* images get the new one depends on
the machine's load, not on the stream. Measured on the ZTF night (ARCHITECTURE.md, "Control
lag"): a run on a faster machine scored its last 111 alerts two refinements late and flagged
13.5 % of them against a 5 % target.

:class:`ControlLag` measures the controller's lag on ``scores`` (high watermark minus the
controller group's committed offset, summed over partitions) with its own client, which never
joins the group, and :meth:`ControlLag.hold` waits before a batch, checking every
``interval_s``, until the lag is back under the bound. So a decision drawn from score ``n`` is
in force (the scorer also waits for the control log's end before each batch) before the scorer
has served more than about ``n + max_control_lag + batch`` images.

Never blocks for long: a controller that has never committed (none runs yet, or none at all,
as in a replay that only rescores) is not waited for; one whose committed offsets do not move
for ``stall_s`` is declared stalled, the scorer goes on (a warning, the ``stalled`` count) and
waits again only once the controller has moved. ``max_control_lag = 0`` disables it.

The lag is read by :class:`~processors.core.group_lag.GroupProbe` (on the embedded broker up to
a produced batch short per partition; a real Kafka reports it exactly).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import KafkaException

from processors.core.config import Settings
from processors.core.group_lag import GroupProbe
from processors.core.records import CONTROLLER_GROUP

__all__ = ["ControlLag"]

log = logging.getLogger(__name__)


class ControlLag:
    """See the module docstring. Not thread-safe: one per scorer loop."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        *,
        interval_s: float = 0.1,
        stall_s: float | None = None,
    ) -> None:
        self.max_lag = settings.score.max_control_lag
        self.stall_s = settings.score.control_stall_s if stall_s is None else stall_s
        self.interval_s = interval_s
        self._probe: GroupProbe | None = None
        if self.max_lag > 0:
            group = settings.group(CONTROLLER_GROUP)
            self._probe = GroupProbe(settings, bootstrap, group, "scores")
        self.waited_s = 0.0
        self.stalled = 0  # times the controller was declared stalled
        self.measured = 0  # measurements taken (each asks the broker 1 + partitions questions)
        self._stalled_at: int | None = None  # its committed total when declared stalled
        self._headroom = 0  # scores that may still be produced before the bound can be reached

    def measure(self) -> tuple[int, int] | None:
        """``(lag, committed)``: scores not yet committed by the controller, and its committed
        total; None while it has committed nothing (no controller to wait for)."""
        assert self._probe is not None
        lag = committed_total = 0
        committed_any = False
        for p in self._probe.positions():
            if p.committed < 0:
                lag += p.high  # a partition it has not committed on yet: all of it is ahead
                continue
            committed_any = True
            committed_total += p.committed
            lag += max(p.high - p.committed, 0)
        return (lag, committed_total) if committed_any else None

    def hold(self, stopped: Callable[[], bool], produced: int = 0) -> float:
        """Wait while the controller's lag is over the bound; returns the seconds waited.

        ``produced``: score records produced since the last call. The lag grows by at most
        that, so while the headroom left by the last measurement covers it the broker is not
        asked (a batch normally costs no round trip at all).
        """
        if self._probe is None:
            return 0.0
        self._headroom -= produced
        if self._headroom > 0 and self._stalled_at is None:
            return 0.0
        started = time.monotonic()
        progress_at, last_committed = started, -1
        while not stopped():
            try:
                measured = self.measure()
            except KafkaException as exc:  # never block scoring on a failed measurement
                log.warning("score: could not measure the controller's lag: %s", exc)
                break
            self.measured += 1
            if measured is None:
                self._headroom = 0
                break
            lag, committed = measured
            self._headroom = self.max_lag - lag
            if self._stalled_at is not None:
                if committed == self._stalled_at:
                    break  # still stalled: score on without it
                log.info("score: the controller moves again; waiting for it when ahead")
                self._stalled_at = None
            if lag <= self.max_lag:
                break
            now = time.monotonic()
            if committed != last_committed:
                progress_at, last_committed = now, committed
            elif now - progress_at >= self.stall_s:
                log.warning(
                    "score: the controller committed nothing in %.0f s with %d scores unread; "
                    "scoring on without waiting for it",
                    self.stall_s,
                    lag,
                )
                self._stalled_at, self.stalled = committed, self.stalled + 1
                break
            time.sleep(self.interval_s)
        waited = time.monotonic() - started
        self.waited_s += waited
        return waited

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()

"""The end of a local run: the revisions that wait for a score that will not come.

A drift's revision waits for the first score made under its recalibration, since scores of
the replaced calibration may still be in flight (ARCHITECTURE.md, "Self-correction"). Once a
run's input has ended and every stage has handled every image, no such score will come, so a
drift raised near the end of a finite stream would leave its decisions as served. The run asks
for those revisions itself, as an operator does with ``skyloop control revise SOURCE``: one
``revision.requested`` per source whose revision waits (the controller's progress file names
them), then it waits until the controller has made them (none waits) and every stage is done
again (the sink stored the revised decisions, detect localized the candidates they add).

Idempotent: a request applies only to revisions waiting for calibrations logged before it,
and a made revision waits no more, so asking twice revises nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from processors.core.config import Settings
from processors.core.control import new_event
from processors.core.events import EventType
from processors.core.exceptions import SkyloopError
from processors.core.kafka import make_producer, produce_control_event

__all__ = ["ISSUER", "close_revisions"]

ISSUER = "skyloop run"


def close_revisions(
    settings: Settings,
    bootstrap: str,
    waiting: Callable[[], list[str]],
    done: Callable[[], bool],
    out: TextIO,
    timeout_s: float = 120.0,
) -> list[str]:
    """Request the waiting revisions (``waiting()``: the sources whose revision waits) and
    wait until none waits and ``done()``; returns the sources asked for. Raises
    :class:`SkyloopError` when that takes longer than ``timeout_s``."""
    sources = waiting()
    if not sources:
        return []
    out.write(
        f"skyloop: the input has ended; revising the decisions since the last drift of "
        f"{', '.join(sources)}\n"
    )
    producer = make_producer(settings, bootstrap, **{"linger.ms": 0})
    reason = "the run's input ended and every stage is done: no score under the recalibration"
    for source in sources:  # each flushed to the broker, or StackError
        event = new_event(EventType.REVISION_REQUESTED, source, ISSUER, {"reason": reason})
        produce_control_event(producer, settings, event)
    deadline = time.monotonic() + timeout_s
    while waiting() or not done():
        if time.monotonic() > deadline:
            raise SkyloopError(
                f"the revisions of {', '.join(sources)} were not made and stored within "
                f"{timeout_s:.0f} s"
            )
        time.sleep(0.25)
    return sources

"""The controller app's Faust consumer: stream partitions without a committed offset are rewound.

Why: when Faust (faust-streaming 0.15) seeks its stream partitions back to their committed
offsets (after table recovery, and whenever it finds its flow stopped), it relies on aiokafka's
``seek_to_committed``, which moves only partitions whose committed offset is above 0. Records
that Faust fetched but did not hand to an agent (it drops a batch's rest when the flow stops or
the generation changes, and records of partitions that are not active) have already advanced
aiokafka's position; a partition with a committed offset gets them again from the seek, a
partition without one never does. Measured here: a controller worker restarted by ``kill -9`` lost
the first 32 scores of one partition and every score of another, and the run never ended
because its committed offsets never reached the sink's.

:class:`RewindingConsumer` corrects the seek: each of the service's input partitions goes to
where the service resumes it (:meth:`processors.controller.service.ControlService.resume_offset`),
after the highest offset its table says it applied, or to the partition's earliest offset when
the table never applied any; another stream partition without a committed offset goes to its
earliest offset too (``consumer_auto_offset_reset="earliest"`` is what such a partition means).
Records handled before are handled again; the service recognises them by the per-source offsets
in its table. The table, not the committed offset, decides because Faust commits handled
offsets on a timer without waiting for the changelog records of the state they produced (they
wait in its producer buffer, whose flush gives up after 0.1 s without progress): a crash or a
stop between the two leaves the committed offset past the table, and the records in between
would never be applied. (Not caught in the act: twelve workers killed right after their first
commit, four on a quiet machine and eight beside three busy loops, all had their table at the
commit. The rule makes the table the only thing a resume trusts either way.) The other way
round, the table ahead of the commit (the usual case after a stop), the table saves handling
records twice.
Changelog partitions are left alone: table recovery positions them itself. The seek runs after
table recovery, so the table it reads is the restored one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

__all__ = ["ResumeOffset", "RewindingApp", "RewindingConsumer"]

log = logging.getLogger(__name__)

ResumeOffset = Callable[[str, int], int | None]
"""(topic, partition) → the offset to resume at, or None to keep the committed one."""


class RewindingConsumer(aiokafka_driver.Consumer):
    """See the module docstring."""

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await super().seek_to_committed()
        changelogs = self.app.tables.changelog_topics
        streams = [tp for tp in committed if tp.topic not in changelogs]
        resume: ResumeOffset = getattr(self.app, "resume_offset", _nowhere)
        targets = {tp: resume(tp.topic, tp.partition) for tp in streams}
        # the beginning of a partition is its earliest retained offset; a partition nobody
        # resumes goes there too when it has no committed offset
        starts = [
            tp for tp in streams if targets[tp] == 0 or (targets[tp] is None and not committed[tp])
        ]
        if starts:
            earliest = await self.earliest_offsets(*starts)
            targets.update({tp: earliest.get(tp) or 0 for tp in starts})
        # an uncommitted partition is always sought: aiokafka's position may be past its start
        moves = {
            tp: offset
            for tp, offset in targets.items()
            if offset is not None and (not committed[tp] or offset != committed[tp])
        }
        for tp, offset in sorted(moves.items()):
            if offset != (committed[tp] or 0):
                log.info(
                    "controller: %s[%d] resumes at %d (committed: %s)",
                    tp.topic,
                    tp.partition,
                    offset,
                    committed[tp],
                )
        if moves:
            await self.seek_wait(moves)
        # Faust drops records below the offsets returned here: return where each partition is
        return {**committed, **moves}


def _nowhere(topic: str, partition: int) -> int | None:
    return None


class _RewindingTransport(aiokafka_driver.Transport):
    Consumer = RewindingConsumer


class RewindingApp(faust.App):
    """A Faust app whose consumer is a :class:`RewindingConsumer` (``kafka://`` brokers).

    ``resume_offset`` is set by whoever owns the state the stream partitions feed.
    """

    resume_offset: ResumeOffset = staticmethod(_nowhere)

    def _new_transport(self) -> Any:
        return _RewindingTransport(self.conf.broker_consumer, self)

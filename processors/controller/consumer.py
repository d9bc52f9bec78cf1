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

:class:`RewindingConsumer` completes the seek: every stream partition that has no committed
offset goes back to its earliest offset (``consumer_auto_offset_reset="earliest"`` is what such
a partition means). Records handled before are handled again; the service recognises them by
the per-source offsets in its table (:mod:`processors.controller.service`). Changelog partitions are
left alone: table recovery positions them itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP

__all__ = ["RewindingApp", "RewindingConsumer"]


class RewindingConsumer(aiokafka_driver.Consumer):
    """See the module docstring."""

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await super().seek_to_committed()
        changelogs = self.app.tables.changelog_topics
        uncommitted = [
            tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs
        ]
        if uncommitted:
            earliest = await self.earliest_offsets(*uncommitted)
            await self.seek_wait({tp: earliest.get(tp) or 0 for tp in uncommitted})
        return committed


class _RewindingTransport(aiokafka_driver.Transport):
    Consumer = RewindingConsumer


class RewindingApp(faust.App):
    """A Faust app whose consumer is a :class:`RewindingConsumer` (``kafka://`` brokers)."""

    def _new_transport(self) -> Any:
        return _RewindingTransport(self.conf.broker_consumer, self)

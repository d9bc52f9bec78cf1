"""ZTF alert packets from a Kafka topic: one Avro container (one alert) per message value.

This is how the public ZTF stream is served to brokers. Messages are consumed in a consumer
group from ``auto.offset.reset=earliest``; offsets are never auto-committed.

At-least-once: a message's offset is committed only once every item made from it has been
taken by the consumer of this iterator. With ``commit="on_next"`` (default) "taken" means the
consumer asked for the item after the message's last one (so an item being processed when the
process dies is read again after a restart); with ``commit="manual"`` the caller calls
:meth:`ZtfTopicSource.commit` after its own outputs are delivered (commit after
delivery), which commits every message whose items have all been handed out. A message whose
alerts were all cut still counts as taken. In manual mode the caller may also set ``deliver``
(a callable that returns only once the outputs of every item handed out so far are delivered,
and raises otherwise): the source then commits by itself at its quiet points, in this order,
``deliver()`` then :meth:`ZtfTopicSource.commit`: when a poll returns no message while offsets
are pending (so the tail of a stream does not wait for the next message), and when an
iteration ends normally (``max_messages``, idle timeout, ``stop``). This is safe only for a
caller that finishes with each item before asking for the next, as the ingest processor does;
an iteration closed early (GeneratorExit) or ended by an error commits nothing more.

Offsets of partitions revoked in a rebalance are dropped uncommitted (their messages are
re-read by the next owner). The end offset / high watermark is never used (it is wrong on the
embedded broker): the stream ends after ``max_messages`` messages, after ``idle_timeout_s``
without a message (counted from the first partition assignment), when ``stop`` is set, or when
the caller stops iterating.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, Literal, get_args

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from processors.core.exceptions import ConfigError, SourceError
from processors.ingest.sources.base import BaseSource, Capabilities
from processors.ingest.sources.items import SourceItem
from processors.ingest.ztf.alert_items import AlertItems, QualityCuts, ZtfStats
from processors.ingest.ztf.cutouts import CutoutMode

__all__ = ["COMMIT_MODES", "CommitMode", "ZtfTopicSource"]

log = logging.getLogger(__name__)

CommitMode = Literal["on_next", "manual"]
COMMIT_MODES: tuple[str, ...] = get_args(CommitMode)


class ZtfTopicSource(BaseSource):
    """An image source over a Kafka topic of ZTF packets.

    Order: per partition, offset order (one partition keeps the publish order). A message that
    is not a readable packet becomes a SourceFailure keyed ``topic/partition/offset`` with the
    message value as ``raw``. Counters are in ``stats`` (see :class:`ZtfStats`).
    """

    capabilities = Capabilities(positions=True, commits_after_delivery=True)

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        group_id: str,
        *,
        cutout: CutoutMode = "difference",
        quality: QualityCuts | None = None,
        name: str = "ztf",
        max_messages: int | None = None,
        idle_timeout_s: float | None = None,
        commit: CommitMode = "on_next",
        join_timeout_s: float = 60.0,
        poll_timeout_s: float = 0.5,
        consumer_config: Mapping[str, Any] | None = None,
        stop: threading.Event | None = None,
        deliver: Callable[[], None] | None = None,
    ) -> None:
        for key, value in (("bootstrap_servers", bootstrap_servers), ("topic", topic)):
            if not value:
                raise ConfigError(f"{key}: empty; a Kafka {key.replace('_', ' ')} is needed")
        if not group_id:
            raise ConfigError("group_id: empty; a consumer group id is needed")
        if max_messages is not None and max_messages < 1:
            raise ConfigError(f"max_messages={max_messages!r}: accepted values are integers >= 1")
        if idle_timeout_s is not None and not idle_timeout_s > 0:
            raise ConfigError(f"idle_timeout_s={idle_timeout_s!r}: accepted values are > 0")
        if commit not in COMMIT_MODES:
            raise ConfigError(f"commit={commit!r}: accepted values are {', '.join(COMMIT_MODES)}")
        self.name = name
        self.topic = topic
        self.max_messages = max_messages
        self.idle_timeout_s = idle_timeout_s
        self.commit_mode: CommitMode = commit
        self.join_timeout_s = join_timeout_s
        self.poll_timeout_s = poll_timeout_s
        self.stop = stop
        self.deliver = deliver
        self.stats: ZtfStats = ZtfStats()
        self._items = AlertItems(name, cutout, quality or QualityCuts(), self.stats)
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "session.timeout.ms": 6000,  # the embedded broker's first join takes half of it
            **(consumer_config or {}),
        }
        self._consumer: Consumer | None = None
        self._pending: dict[tuple[str, int], int] = {}
        self._assigned_at: float | None = None

    @property
    def endless(self) -> bool:
        """A topic is endless unless ``max_messages`` or ``idle_timeout_s`` ends the stream."""
        return self.max_messages is None and self.idle_timeout_s is None

    def __repr__(self) -> str:
        return f"ZtfTopicSource(topic={self.topic!r}, group_id={self._config['group.id']!r})"

    def commit(self) -> None:
        """Synchronously commit the offsets of every message whose items were all handed out.

        Call it from the iterating thread, after the outputs made from those items are
        delivered. A no-op when nothing is pending or no iteration is running.
        """
        if self._consumer is None or not self._pending:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._pending.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                raise SourceError(f"commit of {self.topic} offsets failed: {exc}") from exc
        self._pending.clear()

    def _commit_delivered(self) -> None:
        """Manual mode with ``deliver`` set: ``deliver()``, then commit what is pending."""
        if self.commit_mode == "manual" and self.deliver is not None and self._pending:
            self.deliver()
            self.commit()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._assigned_at is None:
            self._assigned_at = time.monotonic()
        log.info("ztf source %r assigned %s", self.name, [p.partition for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._pending.pop((p.topic, p.partition), None)

    def __iter__(self) -> Generator[SourceItem, None, None]:
        consumer = Consumer(self._config)
        self._consumer, self._pending, self._assigned_at = consumer, {}, None
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        started = last_message = time.monotonic()
        taken = 0
        try:
            while not (self.stop is not None and self.stop.is_set()):
                if self.max_messages is not None and taken >= self.max_messages:
                    break
                msg = consumer.poll(self.poll_timeout_s)
                now = time.monotonic()
                if msg is None:
                    self._commit_delivered()
                    if self._timed_out(now, started, last_message):
                        break
                    continue
                if self._is_error(msg):
                    continue
                taken += 1
                last_message = now
                yield from self._message_items(msg)
                if self.commit_mode == "on_next":
                    self.commit()
            self._commit_delivered()
        finally:
            self._consumer = None
            consumer.close()
            self._items.log_summary()

    def _timed_out(self, now: float, started: float, last_message: float) -> bool:
        if self._assigned_at is None:
            if now - started > self.join_timeout_s:
                raise SourceError(
                    f"no partition of {self.topic!r} assigned within {self.join_timeout_s} s"
                )
            return False
        idle_since = max(last_message, self._assigned_at)
        return self.idle_timeout_s is not None and now - idle_since >= self.idle_timeout_s

    def _is_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.fatal():
            raise SourceError(f"fatal Kafka error on {self.topic!r}: {err}")
        log.warning("ztf source %r: Kafka error on %r: %s", self.name, self.topic, err)
        return True

    def _message_items(self, msg: Message) -> Iterator[SourceItem]:
        """Items of one message; its offset is marked pending once the last one is handed out."""
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        key = f"{topic}/{partition}/{offset}"
        value = msg.value() or b""
        origin = {
            "kafka_topic": topic,
            "kafka_partition": str(partition),
            "kafka_offset": str(offset),
        }
        if value:
            items = list(self._items.from_packet(key, value, origin))
        else:
            items = [self._items.packet_failure(key, b"", "EmptyMessage", "message has no value")]
        for index, item in enumerate(items):
            if index == len(items) - 1:
                self._pending[(topic, partition)] = offset + 1
            yield item
        if not items:
            self._pending[(topic, partition)] = offset + 1

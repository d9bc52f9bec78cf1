"""confluent-kafka clients configured the skyloop way, topic creation, and the control follower.

Consumers never auto-commit: processors commit offsets explicitly, only after their outputs are
delivered (producer flushed) or written (ClickHouse insert returned). Producers deliver each
message at least once (acks=all, retries); idempotent producers are off because the embedded
broker does not support them (ARCHITECTURE.md, "The local stack"); duplicates are absorbed by
content-addressed keys.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from processors.core.codec import AvroCodec, default_codec
from processors.core.config import Settings
from processors.core.control import EVENT_TYPES, ControlState
from processors.core.exceptions import CodecError, StackError
from processors.core.kafka_errors import explain, watched
from processors.core.metrics import CONTROL_EVENTS_REFUSED
from processors.core.records import TOPICS, ControlEventRecord

__all__ = [
    "ControlFollower",
    "ensure_topics",
    "faust_credentials",
    "kafka_security",
    "make_consumer",
    "make_producer",
    "partition_for",
    "produce_control_event",
    "retention_configs",
]

log = logging.getLogger(__name__)


def kafka_security(settings: Settings) -> dict[str, str]:
    """librdkafka settings for TLS and SASL from ``settings`` (empty for PLAINTEXT).

    Every Kafka client skyloop builds (producers, consumers, admin, watermark probes) merges
    these, so one set of ``SKYLOOP_KAFKA_*`` variables secures them all.

    >>> from processors.core.config import Settings
    >>> kafka_security(Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=
    ...     "SCRAM-SHA-512", kafka_sasl_username="sky", kafka_sasl_password="pw"))["sasl.password"]
    'pw'
    """
    conf: dict[str, str] = {}
    if settings.kafka.security_protocol == "PLAINTEXT":
        return conf
    conf["security.protocol"] = settings.kafka.security_protocol
    if settings.kafka.sasl_mechanism is not None:
        conf["sasl.mechanism"] = settings.kafka.sasl_mechanism
    if settings.kafka.sasl_username is not None:
        conf["sasl.username"] = settings.kafka.sasl_username
    if settings.kafka.sasl_password is not None:
        conf["sasl.password"] = settings.kafka.sasl_password.get_secret_value()
    for key, path in (
        ("ssl.ca.location", settings.kafka.ssl_ca_location),
        ("ssl.certificate.location", settings.kafka.ssl_certificate_location),
        ("ssl.key.location", settings.kafka.ssl_key_location),
    ):
        if path is not None:
            conf[key] = str(path)
    return conf


def faust_credentials(settings: Settings) -> Any:
    """The same TLS/SASL settings as :func:`kafka_security`, in Faust's (aiokafka's) form."""
    import ssl

    import faust

    protocol = settings.kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka.ssl_ca_location) if settings.kafka.ssl_ca_location else None
        )
        if settings.kafka.ssl_certificate_location is not None:
            context.load_cert_chain(
                str(settings.kafka.ssl_certificate_location),
                str(settings.kafka.ssl_key_location) if settings.kafka.ssl_key_location else None,
            )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    password = settings.kafka.sasl_password
    return faust.SASLCredentials(
        username=settings.kafka.sasl_username,
        password=password.get_secret_value() if password is not None else None,
        ssl_context=context,
        mechanism=settings.kafka.sasl_mechanism,
    )


def make_producer(settings: Settings, bootstrap: str, **overrides: Any) -> Producer:
    conf: dict[str, Any] = {
        **kafka_security(settings),
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "enable.idempotence": False,
        "message.max.bytes": 2_000_000,
        "client.id": f"{settings.kafka.group_prefix}-producer",
    }
    conf.update(overrides)
    return Producer(conf)


def make_consumer(settings: Settings, bootstrap: str, group_id: str, **overrides: Any) -> Consumer:
    conf: dict[str, Any] = {
        **kafka_security(settings),
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "session.timeout.ms": settings.kafka.session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.kafka.session_timeout_ms // 6),
        "max.poll.interval.ms": 600_000,
        "fetch.message.max.bytes": 2_000_000,
        # librdkafka stops fetching a partition whose prefetch queue is full and, by default,
        # waits a whole second before it looks again: a processor busy with one large batch
        # then finds nothing queued for the next (measured: the sink stalled 0.6-1 s per batch)
        "fetch.queue.backoff.ms": 20,
    }
    conf.update(overrides)
    return Consumer(conf)


def retention_configs(settings: Settings, name: str) -> dict[str, str]:
    """A real Kafka's per-topic retention for topic ``name`` (its base name): the hot log's
    bounds (ARCHITECTURE.md, "The local stack") on the data topics, ``log_retention_bytes``
    shared over all their partitions (``retention.bytes`` counts per partition; segments a
    quarter of it, so deletion can act), ``log_retention_s`` as ``retention.ms``; ``control.events``
    keeps everything. Unlike the embedded broker's rotation, Kafka deletes by age and size
    whether or not a group has consumed: size the bounds to the longest lag to survive.

    >>> from processors.core.config import Settings
    >>> retention_configs(Settings(log_retention_bytes=2**30, log_retention_s=3600), "scores")
    {'retention.bytes': '53687091', 'segment.bytes': '13421772', 'retention.ms': '3600000'}
    """
    if name == "control.events":
        return {"retention.bytes": "-1", "retention.ms": "-1"}
    conf: dict[str, str] = {}
    bound = settings.broker.log_retention_bytes
    if bound > 0:
        partitions = sum(s.partitions for n, s in TOPICS.items() if n != "control.events")
        per = max(bound // partitions, 2**20)
        conf["retention.bytes"] = str(per)
        conf["segment.bytes"] = str(max(per // 4, 2**20))
    if settings.broker.log_retention_s > 0:
        conf["retention.ms"] = str(int(settings.broker.log_retention_s * 1000))
    return conf


def ensure_topics(
    settings: Settings, bootstrap: str, timeout_s: float = 15.0, configs: bool | None = None
) -> None:
    """Create every topic of the catalogue (with its partition count) if it does not exist.

    Topics must exist before any client touches them: the embedded broker auto-creates topics
    with 4 partitions, which would break the single-partition order of ``control.events``.
    ``configs`` (default: when ``bootstrap_servers`` names a real Kafka) creates them with
    :func:`retention_configs`; the embedded broker bounds its log by rotation instead.
    Brokers that refuse the client's TLS or SASL raise a ConfigError, brokers that do not answer
    a StackError, each saying so and naming the settings to check
    (:mod:`processors.core.kafka_errors`).
    """
    if configs is None:
        configs = settings.kafka.bootstrap_servers is not None
    conf, watch = watched({**kafka_security(settings), "bootstrap.servers": bootstrap})
    admin = AdminClient(conf)
    deadline = time.monotonic() + timeout_s
    while True:  # in short asks, so that a refused login or handshake fails at once
        try:
            existing = set(admin.list_topics(timeout=min(1.0, timeout_s)).topics)
            break
        except KafkaException as exc:  # say which settings decide it
            admin.poll(0.2)  # serves the error callbacks that tell why
            if watch.refused() or time.monotonic() >= deadline:
                raise explain(settings, bootstrap, watch, exc) from exc
    wanted = [
        NewTopic(
            settings.topic(spec.name),
            spec.partitions,
            1,
            config=retention_configs(settings, spec.name) if configs else {},
        )
        for spec in TOPICS.values()
        if settings.topic(spec.name) not in existing
    ]
    if not wanted:
        return
    for topic, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise StackError(f"could not create topic {topic}: {exc}") from exc


def partition_for(source: str, partitions: int) -> int:
    """Records of one source always go to one partition, so per-source order is kept."""
    return zlib.crc32(source.encode()) % partitions


def produce_control_event(
    producer: Producer,
    settings: Settings,
    event: ControlEventRecord,
    codec: AvroCodec | None = None,
) -> None:
    """Emit one control event and wait until the broker has it (flush).

    Each event is flushed alone, so it is its own batch: this keeps the embedded broker's
    high watermark exact for ``control.events`` (it is wrong for multi-record batches).
    """
    codec = codec or default_codec()
    producer.produce(
        settings.topic("control.events"),
        key=event["subject"].encode(),
        value=codec.encode(event, "skyloop.ControlEvent"),
        partition=0,
    )
    if producer.flush(30) != 0:
        raise StackError("control event was not delivered within 30 s")


class ControlFollower:
    """Follows ``control.events`` from the beginning in a background thread.

    ``state`` is always a complete fold of the log up to ``state.offset`` (swapped atomically,
    never partially applied). ``wait_caught_up`` blocks until the fold has reached the log end
    seen at call time, so a processor that calls it at start has replayed the whole history
    before it processes its first input. Undecodable events are logged and skipped (their
    offset still advances), never applied half-way. :meth:`has_event` answers whether an event
    id is among the last ``remember`` events applied (bounded memory), so a restarted emitter
    can tell a decision it already logged. An event the fold refuses (:mod:`.fold_guard`) is
    logged, counted (``skyloop_control_events_refused_total``), never handed to ``on_event`` nor
    remembered by :meth:`has_event`; :meth:`refusal_at` tells the reason for one of the last
    ``remember`` refusals by offset. An event larger than ``kafka.max_message_bytes`` is refused
    unread, the same way (:mod:`processors.core.admission`).
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        on_event: Callable[[ControlState, ControlEventRecord], None] | None = None,
        codec: AvroCodec | None = None,
        remember: int = 100_000,
    ) -> None:
        self.settings = settings
        self.topic = settings.topic("control.events")
        self.codec = codec or default_codec()
        self.on_event = on_event
        self._consumer = Consumer(
            {
                **kafka_security(settings),
                "bootstrap.servers": bootstrap,
                "group.id": f"{settings.kafka.group_prefix}.control-follower",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self._consumer.assign([TopicPartition(self.topic, 0, 0)])
        # Watermark queries get their own client: librdkafka blocks them on a consumer that
        # another thread is polling.
        self._probe = Consumer(
            {
                **kafka_security(settings),
                "bootstrap.servers": bootstrap,
                "group.id": "skyloop.probe",
            }
        )
        self.state = ControlState.initial()
        self.remember = remember
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._refused: OrderedDict[int, str] = OrderedDict()
        self._next_offset = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-follower", daemon=True)

    def start(self) -> ControlFollower:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("control follower: %s", err)
                continue
            offset = int(msg.offset() or 0)
            value = msg.value() or b""
            if len(value) > self.settings.kafka.max_message_bytes:
                self._refuse_unread(offset, len(value))
                continue
            try:
                event = self.codec.decode(value, "skyloop.ControlEvent")
            except CodecError as exc:
                log.error("skipping undecodable control event at offset %d: %s", offset, exc)
                with self._cond:
                    self._next_offset = offset + 1
                    self._cond.notify_all()
                continue
            new_state = self.state.apply(event, offset)  # type: ignore[arg-type]
            refused = new_state.events_refused != self.state.events_refused
            if refused:
                refusal = new_state.refusals[-1]
                log.warning("control event at offset %d refused: %s", offset, refusal.reason)
                known = refusal.type if refusal.type in EVENT_TYPES else "other"
                CONTROL_EVENTS_REFUSED.labels(known).inc()
            with self._cond:
                self.state = new_state
                self._next_offset = offset + 1
                if refused:
                    self._refused[offset] = new_state.refusals[-1].reason
                    while len(self._refused) > self.remember:
                        self._refused.popitem(last=False)
                else:  # a refused event's id is not remembered: an intruder that takes the
                    # (predictable) id of a decision not made yet cannot stop it being logged
                    self._recent[event["event_id"]] = None
                    while len(self._recent) > self.remember:
                        self._recent.popitem(last=False)
                self._cond.notify_all()
            if self.on_event is not None and not refused:
                self.on_event(new_state, event)  # type: ignore[arg-type]

    def _refuse_unread(self, offset: int, size: int) -> None:
        """An event too large to decode: refused, never applied (the sink dead-letters it)."""
        limit = self.settings.kafka.max_message_bytes
        reason = f"control event of {size} bytes; the limit is {limit} (kafka.max_message_bytes)"
        log.warning("control event at offset %d refused unread: %s", offset, reason)
        CONTROL_EVENTS_REFUSED.labels("other").inc()
        with self._cond:
            self._refused[offset] = reason
            while len(self._refused) > self.remember:
                self._refused.popitem(last=False)
            self._next_offset = offset + 1
            self._cond.notify_all()

    def has_event(self, event_id: str) -> bool:
        """Whether ``event_id`` is among the last ``remember`` events applied."""
        with self._cond:
            return event_id in self._recent

    def refusal_at(self, offset: int, timeout_s: float) -> str | None:
        """Why the fold refused the event at ``offset`` (None: applied, or not an event), once
        the fold has read it; :class:`TimeoutError` when it has not within ``timeout_s``."""
        if not self.wait_for_offset(offset + 1, timeout_s):
            raise TimeoutError(f"the control fold has not reached offset {offset}")
        with self._cond:
            return self._refused.get(offset)

    def log_end(self, timeout_s: float = 10.0) -> int:
        """The control log's end offset, asked of the broker.

        A broker that has just restarted answers "unknown partition" (or not at all) until the
        client's metadata is refreshed; that is retried until ``timeout_s`` has passed, after
        which the last error is raised.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                _low, high = self._probe.get_watermark_offsets(
                    TopicPartition(self.topic, 0), timeout=max(left, 0.1), cached=False
                )
                return int(high)
            except KafkaException:
                if deadline - time.monotonic() <= 0:
                    raise
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))

    def wait_for_offset(self, offset: int, timeout_s: float) -> bool:
        """Block until every event with an offset below ``offset`` is applied."""
        with self._cond:
            return self._cond.wait_for(lambda: self._next_offset >= offset, timeout_s)

    def wait_caught_up(self, timeout_s: float = 30.0) -> bool:
        """Block until every event in the log when called is applied; ``timeout_s`` covers
        both asking the broker for the log's end and applying up to it."""
        deadline = time.monotonic() + timeout_s
        end = self.log_end(timeout_s)
        return self.wait_for_offset(end, max(deadline - time.monotonic(), 0.0))

    def wait_until(self, predicate: Callable[[ControlState], bool], timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.state), timeout_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._consumer.close()
        self._probe.close()

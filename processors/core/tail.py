"""Read any topic's records back as JSON lines: ``skyloop tail``.

Each record becomes one JSON object: ``topic`` (base name), ``partition``, ``offset``,
``timestamp`` (the broker's, ISO 8601, or null), ``key`` (UTF-8, or hex when it is not text) and
``value``, the record decoded with the topic's schema from the catalogue
(:data:`processors.core.records.TOPICS`). Large payloads are summarised, never dumped: bytes
become ``{"bytes": n, "sha256": "<first 16 hex>"}`` and a list of more than
:data:`LIST_LIMIT` numbers (an embedding) ``{"floats": n, "mean": m, "head": [...]}``. A
message that does not decode is still printed, with ``"error"`` naming why, instead of
``value``: a tail shows what is there, bad records included.

Invariants: a tail never commits offsets and joins no consumer group that a worker uses (its
group id is unique and it assigns partitions itself), so it cannot disturb a running pipeline.
It stops after ``count`` records, or after ``idle_s`` seconds without a record. It never
relies on end offsets to know that it is done: the embedded broker reports them wrong for
batched records. With a start time, it seeks with the broker's offsets-for-times and then also
skips every record stamped earlier: the embedded broker answers offset 0 to any time (both
quirks: ARCHITECTURE.md, "The local stack").
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, KafkaException, TopicPartition

from processors.core.codec import AvroCodec, default_codec
from processors.core.config import Settings
from processors.core.exceptions import CodecError, ConfigError
from processors.core.kafka import make_consumer
from processors.core.records import TOPICS

__all__ = ["LIST_LIMIT", "TailStart", "summarise", "tail", "tail_start"]

LIST_LIMIT = 16
"""Lists of numbers longer than this are summarised (embeddings are 1280 floats)."""


@dataclass(frozen=True)
class TailStart:
    """Where a tail starts: ``beginning``, ``end`` (only records produced from now on), or the
    first record at or after ``at``."""

    where: str
    at: datetime | None = None


def tail_start(text: str) -> TailStart:
    """``beginning``, ``end`` or an ISO 8601 time (naive means UTC); ConfigError otherwise.

    >>> tail_start("end"), tail_start("2026-12-01T10:00Z").at.isoformat()
    (TailStart(where='end', at=None), '2026-12-01T10:00:00+00:00')
    """
    if text in ("beginning", "end"):
        return TailStart(text)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--from {text!r}: accepted values are beginning, end or an ISO 8601 time, "
            "e.g. 2026-12-01T10:00Z"
        ) from None
    return TailStart("time", (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC))


def summarise(value: Any) -> Any:
    """``value`` made JSON-ready, with bytes and long number lists summarised.

    >>> summarise({"pixels": b"abc", "embedding": [1.0] * 20, "ra": 1.5, "tags": {"a": b"x"}})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'pixels': {'bytes': 3, 'sha256': 'ba7816bf8f01cfea'},
     'embedding': {'floats': 20, 'mean': 1.0, 'head': [1.0, 1.0, 1.0, 1.0]},
     'ra': 1.5, 'tags': {'a': {'bytes': 1, 'sha256': '2d711642b726b044'}}}
    """
    if isinstance(value, bytes | bytearray):
        return {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()[:16]}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): summarise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        if numeric and len(value) > LIST_LIMIT:
            return {
                "floats": len(value),
                "mean": round(sum(value) / len(value), 6),
                "head": [round(float(v), 6) for v in value[:4]],
            }
        return [summarise(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return "NaN"
    return value


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key.hex()


def _line(topic: str, schema: str, msg: Any, codec: AvroCodec) -> dict[str, Any]:
    kind, stamp = msg.timestamp()
    out: dict[str, Any] = {
        "topic": topic,
        "partition": msg.partition(),
        "offset": msg.offset(),
        "timestamp": (
            datetime.fromtimestamp(stamp / 1000, UTC).isoformat() if kind and stamp > 0 else None
        ),
        "key": _key_text(msg.key()),
    }
    try:
        out["value"] = summarise(codec.decode(msg.value() or b"", schema))
    except CodecError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["value_bytes"] = len(msg.value() or b"")
    return out


def _start_offsets(consumer: Any, name: str, partitions: int, start: TailStart) -> list[Any]:
    if start.where == "beginning":
        return [TopicPartition(name, p, OFFSET_BEGINNING) for p in range(partitions)]
    if start.where == "end":
        return [TopicPartition(name, p, OFFSET_END) for p in range(partitions)]
    assert start.at is not None
    millis = int(start.at.timestamp() * 1000)
    wanted = [TopicPartition(name, p, millis) for p in range(partitions)]
    found = consumer.offsets_for_times(wanted, timeout=10)
    # no record at or after the time in a partition: -1, i.e. from its end
    return [
        TopicPartition(name, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
        for tp in found
    ]


def tail(
    settings: Settings,
    bootstrap: str,
    topic: str,
    start: TailStart,
    *,
    count: int | None = None,
    key: str | None = None,
    idle_s: float = 3.0,
    write: Callable[[str], None],
) -> int:
    """Print records of ``topic`` (a base name of the catalogue) as JSON lines via ``write``.

    Only records whose key is ``key`` when given. Returns how many records were printed.
    """
    spec = TOPICS.get(topic)
    if spec is None:
        raise ConfigError(f"unknown topic {topic!r}; accepted: {', '.join(sorted(TOPICS))}")
    codec = default_codec()
    consumer = make_consumer(
        settings, bootstrap, f"{settings.kafka.group_prefix}.tail.{uuid.uuid4().hex[:12]}"
    )
    printed = 0
    try:
        consumer.assign(_start_offsets(consumer, settings.topic(topic), spec.partitions, start))
        since_ms = None if start.at is None else int(start.at.timestamp() * 1000)
        for msg in _messages(consumer, idle_s):
            if key is not None and _key_text(msg.key()) != key:
                continue
            if since_ms is not None and msg.timestamp()[1] < since_ms:
                continue
            write(json.dumps(_line(topic, spec.schema, msg, codec), ensure_ascii=False) + "\n")
            printed += 1
            if count is not None and printed >= count:
                break
    finally:
        consumer.close()
    return printed


def _messages(consumer: Any, idle_s: float) -> Iterator[Any]:
    """Consumed messages until ``idle_s`` seconds pass without one."""
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < idle_s:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            if msg.error().retriable() or msg.error().code() < 0:  # partition EOF, transient
                continue
            raise KafkaException(msg.error())
        quiet_since = time.monotonic()
        yield msg

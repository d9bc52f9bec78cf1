"""Score messages into ClickHouse through ClickHouse's own Avro parser (the sink's fast path).

Decoding a score in Python and building its row cost the sink about 80 µs per record, so it
stored a few thousand scores per second. Here the Avro bodies go to ClickHouse untouched:

1. Every message of a batch that was written with the current ``skyloop.ScoreRecord`` schema
   (its single-object header names that schema's fingerprint) is accepted; any other writer
   version takes the record path (:mod:`processors.sink.rows`).
2. :meth:`ScoreLanding.peek` reads the few fields the sink counts (image id, role, candidate,
   calibrated) without decoding the rest (:mod:`processors.core.avro_peek`).
3. :meth:`ScoreLanding.block` wraps the bodies in one Avro object container file whose writer
   schema is a ``ScoreLanding`` record: the Kafka coordinates, then every field of the score.
   A body is a valid encoding of that record once the coordinates are prepended, because an
   Avro record is the concatenation of its fields' encodings; nothing is re-encoded.
4. The sink inserts the file into ``scores_landing`` (``FORMAT Avro``), a table of engine Null
   whose materialized view (migration 007) builds the ``scores`` rows exactly as
   :func:`processors.sink.rows.score_row` does; the views on ``scores`` (hourly aggregates)
   follow from it.

ClickHouse rejects the whole insert when any body does not parse (the container's block size
and sync marker must come out exact), and the sink then stores the batch by the record path,
which names the bad message in a dead letter. So the fast path never stores what the record
path would have refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from processors.core.avro_peek import compile_peek
from processors.core.codec import HEADER_LEN, MAGIC, AvroCodec

__all__ = ["LANDING_TABLE", "ScoreLanding", "zigzag"]

LANDING_TABLE = "scores_landing"
PEEKED = ("image_id", "role", "is_candidate", "calibrated")
_SYNC = bytes.fromhex("736b796c6f6f702d6c616e64696e6721")  # any 16 bytes will do


def zigzag(value: int) -> bytes:
    """Avro's encoding of an int or long: zig-zag, then a little-endian base-128 varint.

    >>> [zigzag(n).hex() for n in (0, -1, 1, 63, 64, 300)]
    ['00', '01', '02', '7e', '8001', 'd804']
    """
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _avro_bytes(data: bytes) -> bytes:
    return zigzag(len(data)) + data


class ScoreLanding:
    """Builds ``scores_landing`` inserts from score messages; see the module docstring.

    Pure (no I/O); one per sink process.
    """

    def __init__(self, codec: AvroCodec) -> None:
        writer = codec.store.get("skyloop.ScoreRecord")
        self.fingerprint = MAGIC + writer.fingerprint
        self.peek_body = compile_peek(writer.raw, PEEKED)
        wrapper: dict[str, Any] = {
            "type": "record",
            "name": "ScoreLanding",
            "namespace": "skyloop.sink",
            "fields": [
                {"name": "kafka_topic", "type": "string"},
                {"name": "kafka_partition", "type": "int"},
                {"name": "kafka_offset", "type": "long"},
                *writer.raw["fields"],
            ],
        }
        metadata = {b"avro.schema": json.dumps(wrapper).encode(), b"avro.codec": b"null"}
        self._header = (
            b"Obj\x01"
            + zigzag(len(metadata))
            + b"".join(_avro_bytes(k) + _avro_bytes(v) for k, v in metadata.items())
            + b"\x00"
            + _SYNC
        )

    def accepts(self, value: bytes) -> bool:
        """Whether ``value`` is a single-object message of the current ScoreRecord schema."""
        return value[:HEADER_LEN] == self.fingerprint

    def peek(self, value: bytes) -> tuple[str, str, bool, bool]:
        """``(image_id, role, is_candidate, calibrated)`` of an accepted message.

        May raise (IndexError, ValueError, UnicodeDecodeError) on a garbled body.
        """
        image_id, role, is_candidate, calibrated = self.peek_body(value, HEADER_LEN)
        return image_id, role, is_candidate, calibrated

    def block(self, topic: str, messages: Sequence[tuple[int, int, bytes]]) -> bytes:
        """One Avro container file of ``(partition, offset, value)`` accepted messages, in
        order, each stamped with ``topic`` and its coordinates."""
        topic_bytes = _avro_bytes(topic.encode())
        prefixes: dict[int, bytes] = {}
        pieces: list[bytes | memoryview] = []
        for partition, offset, value in messages:
            prefix = prefixes.get(partition)
            if prefix is None:
                prefix = prefixes[partition] = topic_bytes + zigzag(partition)
            pieces.append(prefix)
            pieces.append(zigzag(offset))
            pieces.append(memoryview(value)[HEADER_LEN:])
        data = b"".join(pieces)
        return b"".join((self._header, zigzag(len(messages)), zigzag(len(data)), data, _SYNC))

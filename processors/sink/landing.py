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
   Avro record is the concatenation of its fields' encodings; nothing is re-encoded. The
   partition and offset travel as one 12-byte ``fixed`` (little-endian int32 and int64, which
   the view reads back with ``reinterpretAs``): one ``struct`` call per message, where Avro's
   varints cost a Python loop each. The embedding (2.5 KB of a 2.8 KB score, which ClickHouse
   does not store) is cut out and replaced by its union's null branch, one byte: its position
   comes from the peek, so ClickHouse reads a tenth of the bytes.
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
import struct
from collections.abc import Sequence
from typing import Any

from processors.core.avro_peek import compile_peek
from processors.core.codec import HEADER_LEN, MAGIC, AvroCodec

__all__ = ["LANDING_TABLE", "Peeked", "ScoreLanding", "zigzag"]

LANDING_TABLE = "scores_landing"
PEEKED = ("image_id", "role", "is_candidate", "calibrated")
NULL_BRANCH = b"\x00"  # union branch 0, "null": nothing follows
_SYNC = bytes.fromhex("736b796c6f6f702d6c616e64696e6721")  # any 16 bytes will do
_COORDINATES = struct.Struct("<iq")  # partition, offset


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


Peeked = tuple[str, str, bool, bool, tuple[int, int]]
"""What the sink reads of a score without decoding it: ``(image_id, role, is_candidate,
calibrated, embedding)``, the last the ``(start, end)`` offsets of the embedding's encoding in
the message. A plain tuple: one is made per score."""


class ScoreLanding:
    """Builds ``scores_landing`` inserts from score messages; see the module docstring.

    Pure (no I/O); one per sink process.
    """

    def __init__(self, codec: AvroCodec) -> None:
        writer = codec.store.get("skyloop.ScoreRecord")
        self.fingerprint = MAGIC + writer.fingerprint
        embedding = next(f for f in writer.raw["fields"] if f["name"] == "embedding")
        if not (isinstance(embedding["type"], list) and embedding["type"][0] == "null"):
            raise ValueError("the landing path blanks ScoreRecord.embedding: a union, null first")
        self.peek_body = compile_peek(writer.raw, PEEKED, spans=("embedding",))
        wrapper: dict[str, Any] = {
            "type": "record",
            "name": "ScoreLanding",
            "namespace": "skyloop.sink",
            "fields": [
                {"name": "kafka_topic", "type": "string"},
                {
                    "name": "kafka_coordinates",
                    "type": {"type": "fixed", "name": "KafkaCoordinates", "size": 12},
                },
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

    def peek(self, value: bytes) -> Peeked:
        """The counted fields of an accepted message and where its embedding lies.

        May raise (IndexError, ValueError, UnicodeDecodeError) on a garbled body.
        """
        peeked: Peeked = self.peek_body(value, HEADER_LEN)
        if peeked[4][1] > len(value):
            raise ValueError("the embedding runs past the end of the message")
        return peeked

    def block(
        self, topic: str, messages: Sequence[tuple[int, int, bytes, tuple[int, int]]]
    ) -> list[bytes | memoryview]:
        """One Avro container file of ``(partition, offset, value, embedding span)`` accepted
        messages, in order, each stamped with ``topic`` and its coordinates and its embedding
        blanked, as the pieces to write one after the other (views of the messages: joining them
        costs a copy that writing them to their destination makes anyway)."""
        topic_bytes = _avro_bytes(topic.encode())
        prefix_size = len(topic_bytes) + _COORDINATES.size + len(NULL_BRANCH) - HEADER_LEN
        size = sum(len(value) - (end - start) for _, _, value, (start, end) in messages)
        size += prefix_size * len(messages)
        pieces: list[bytes | memoryview] = [self._header, zigzag(len(messages)), zigzag(size)]
        append, coordinates = pieces.append, _COORDINATES.pack
        for partition, offset, value, (start, end) in messages:
            view = memoryview(value)
            append(topic_bytes + coordinates(partition, offset))
            append(view[HEADER_LEN:start])
            append(NULL_BRANCH)
            append(view[end:])
        append(_SYNC)
        return pieces

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from processors.core.codec import MAGIC, AvroCodec, SchemaStore, default_schemas_dir
from processors.core.exceptions import CodecError, CorruptMessageError, UnknownSchemaError
from processors.core.records import ImageRecord

NOW = datetime(2026, 11, 25, 12, 0, 0, 123000, tzinfo=UTC)


def image(**over: object) -> ImageRecord:
    rec = ImageRecord(
        image_id="abc",
        source="sky",
        survey="synthetic",
        ra=10.5,
        dec=-3.25,
        observed_at=NOW,
        fetched_at=NOW,
        format="fits",
        pixels=b"\x00\x01",
        uri=None,
        width=2,
        height=1,
        bands=1,
        provenance={"k": "v"},
        truth={"is_anomaly": True, "kind": "blob", "segment": None, "boxes": []},
    )
    rec.update(over)  # type: ignore[typeddict-item]
    return rec


def test_round_trip_every_topic_schema_names_its_writer() -> None:
    codec = AvroCodec()
    data = codec.encode(image(), "skyloop.ImageRecord")
    assert data[:2] == MAGIC
    assert data[2:10] == codec.store.get("skyloop.ImageRecord").fingerprint
    assert codec.writer_of(data) == "skyloop.ImageRecord"
    assert codec.decode(data, "skyloop.ImageRecord") == image()


def test_fingerprint_is_the_avro_spec_crc64() -> None:
    # Avro spec: CRC-64-AVRO of the canonical form of "int" is 0x7275d51a3f395c8f (LE on wire).
    from fastavro.schema import fingerprint

    assert bytes.fromhex(fingerprint('"int"', "CRC-64-AVRO")) == (0x7275D51A3F395C8F).to_bytes(
        8, "little"
    )


def test_invalid_record_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="ImageRecord"):
        AvroCodec().encode(image(width="wide"), "skyloop.ImageRecord")


def _evolved_store(tmp_path: Path) -> SchemaStore:
    """Current schemas plus an older ImageRecord without `provenance` and `truth`, frozen."""
    current = SchemaStore()
    old = json.loads(current.inlined_json("skyloop.ImageRecord"))
    old["fields"] = [f for f in old["fields"] if f["name"] not in ("provenance", "truth")]
    schemas = tmp_path / "schemas"
    (schemas / "history").mkdir(parents=True)
    for path in default_schemas_dir().glob("*.avsc"):
        (schemas / path.name).write_text(path.read_text())
    (schemas / "history" / "skyloop.ImageRecord.v0.avsc").write_text(json.dumps(old))
    return SchemaStore(schemas)


def test_old_writer_is_read_into_the_current_schema_with_defaults(tmp_path: Path) -> None:
    import io

    import fastavro

    store = _evolved_store(tmp_path)
    old = next(s for s in store.by_fingerprint.values() if s.name == "skyloop.ImageRecord.v0")
    buf = io.BytesIO()
    buf.write(MAGIC + old.fingerprint)
    rec = {k: v for k, v in image().items() if k not in ("provenance", "truth")}
    fastavro.schemaless_writer(buf, old.parsed, rec)
    decoded = AvroCodec(store).decode(buf.getvalue(), "skyloop.ImageRecord")
    assert decoded["provenance"] == {} and decoded["truth"] is None
    assert decoded["image_id"] == "abc" and decoded["ra"] == 10.5


def test_unknown_fingerprint_and_garbage_are_typed_errors() -> None:
    codec = AvroCodec()
    good = codec.encode(image(), "skyloop.ImageRecord")
    with pytest.raises(UnknownSchemaError, match="unknown writer schema"):
        codec.decode(MAGIC + b"\xff" * 8 + good[10:], "skyloop.ImageRecord")
    with pytest.raises(CorruptMessageError, match="header"):
        codec.decode(b"plain text", "skyloop.ImageRecord")
    with pytest.raises(CorruptMessageError):
        codec.decode(good[:-5], "skyloop.ImageRecord")
    with pytest.raises(CorruptMessageError, match="trailing"):
        codec.decode(good + b"junk", "skyloop.ImageRecord")

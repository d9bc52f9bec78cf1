"""Avro codec: single-object encoding over a local schema store.

Wire format (Avro spec, "single object encoding"): ``C3 01`` + the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's parsing canonical form + the Avro binary body.
Every message therefore names its writer schema, and a reader resolves any writer schema it
knows (the current ones in ``schemas/`` and frozen earlier versions in ``schemas/history/``)
into the current reader schema with Avro's evolution rules (new fields take their defaults).

Invariants:
- ``decode(encode(x, name), name) == x`` for every valid record ``x`` (modulo defaults).
- Decoding never crashes the caller with a library error: bad input raises
  :class:`CorruptMessageError` or :class:`UnknownSchemaError` with the reason, which the
  caller turns into a dead letter.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from processors.core.exceptions import (
    CodecError,
    CorruptMessageError,
    SchemaError,
    UnknownSchemaError,
)

__all__ = [
    "HEADER_LEN",
    "MAGIC",
    "AvroCodec",
    "SchemaStore",
    "default_codec",
    "default_schemas_dir",
]

MAGIC = b"\xc3\x01"
HEADER_LEN = 10
"""Bytes before the Avro body of a single-object message: ``C3 01`` and the fingerprint."""


def default_schemas_dir() -> Path:
    """The repository's ``schemas/`` folder (the package is installed editable or copied whole)."""
    return Path(__file__).resolve().parents[2] / "schemas"


@dataclass(frozen=True)
class _Schema:
    name: str
    raw: Any
    parsed: dict[str, Any]
    fingerprint: bytes


def _inline(node: Any, definitions: Mapping[str, Any], seen: set[str]) -> Any:
    """Replace references to shared named records by their definition at first use."""
    if isinstance(node, str):
        if node in definitions and node not in seen:
            seen.add(node)
            return _inline(definitions[node], definitions, seen)
        return node
    if isinstance(node, list):
        return [_inline(item, definitions, seen) for item in node]
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed"):
            full = (
                node["name"]
                if "." in node["name"]
                else f"{node.get('namespace', '')}.{node['name']}"
            )
            seen.add(full.lstrip("."))
        return {key: _inline(value, definitions, seen) for key, value in node.items()}
    return node


def _compile(name: str, raw: Any) -> _Schema:
    try:
        parsed = parse_schema(raw, _write_hint=False)
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise SchemaError(f"schema {name!r} is not valid Avro: {exc}") from exc
    if not isinstance(parsed, dict):
        raise SchemaError(f"schema {name!r} must be a named record, not {type(parsed).__name__}")
    canonical = to_parsing_canonical_form(parsed)
    return _Schema(name, raw, parsed, bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")))


class SchemaStore:
    """All schemas this process can read, by full name (current) and by fingerprint (any version).

    Current schemas are the ``*.avsc`` files of ``schemas_dir``, one named type per file named
    ``<namespace>.<Name>.avsc``; they may reference each other by full name. Earlier versions
    live, fully inlined, in ``schemas_dir/history/<namespace>.<Name>.<version>.avsc``.
    """

    def __init__(self, schemas_dir: Path | None = None) -> None:
        self.schemas_dir = schemas_dir or default_schemas_dir()
        if not self.schemas_dir.is_dir():
            raise SchemaError(f"schemas directory not found: {self.schemas_dir}")
        definitions: dict[str, Any] = {}
        for path in sorted(self.schemas_dir.glob("*.avsc")):
            try:
                definitions[path.stem] = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{path.name}: invalid JSON: {exc}") from exc
        self.current: dict[str, _Schema] = {
            name: _compile(name, _inline(raw, definitions, {name}))
            for name, raw in definitions.items()
        }
        self.by_fingerprint: dict[bytes, _Schema] = {
            s.fingerprint: s for s in self.current.values()
        }
        history = self.schemas_dir / "history"
        for path in sorted(history.glob("*.avsc")) if history.is_dir() else []:
            old = _compile(path.stem, json.loads(path.read_text()))
            self.by_fingerprint.setdefault(old.fingerprint, old)

    def get(self, name: str) -> _Schema:
        try:
            return self.current[name]
        except KeyError:
            known = ", ".join(sorted(self.current))
            raise SchemaError(f"unknown schema {name!r}; known: {known}") from None

    def inlined_json(self, name: str) -> str:
        """The fully inlined schema (defaults and logical types kept), as frozen into
        ``history/`` before the schema changes. Its fingerprint is that of the current form."""
        return json.dumps(self.get(name).raw, indent=1)


class AvroCodec:
    """Encode records as single-object Avro and decode any known writer into a reader schema."""

    def __init__(self, store: SchemaStore | None = None) -> None:
        self.store = store or SchemaStore()

    def encode(self, record: Mapping[str, Any], schema_name: str) -> bytes:
        schema = self.store.get(schema_name)
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        try:
            fastavro.schemaless_writer(buf, schema.parsed, dict(record), strict_allow_default=True)
        except Exception as exc:  # fastavro signals invalid data with ValueError/TypeError/...
            raise CodecError(f"record does not fit {schema_name}: {exc}") from exc
        return buf.getvalue()

    def writer_of(self, data: bytes) -> str:
        """Full name of the writer schema a message names."""
        return self._writer(data).name

    def _writer(self, data: bytes) -> _Schema:
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise CorruptMessageError("not an Avro single-object message (missing C3 01 header)")
        writer = self.store.by_fingerprint.get(bytes(data[2:HEADER_LEN]))
        if writer is None:
            raise UnknownSchemaError(
                f"unknown writer schema fingerprint {bytes(data[2:HEADER_LEN]).hex()}"
            )
        return writer

    def decode(self, data: bytes, schema_name: str) -> dict[str, Any]:
        """Decode ``data`` into the current ``schema_name``; raises CodecError subclasses only."""
        writer = self._writer(data)
        reader = self.store.get(schema_name)
        body = io.BytesIO(data[HEADER_LEN:])
        try:
            record = fastavro.schemaless_reader(body, writer.parsed, reader.parsed)
        except Exception as exc:  # truncated or garbled bodies raise many different types
            raise CorruptMessageError(
                f"bytes do not match writer schema {writer.name}: {type(exc).__name__}: {exc}"
            ) from exc
        if body.tell() != len(data) - HEADER_LEN:
            raise CorruptMessageError(
                f"{len(data) - HEADER_LEN - body.tell()} trailing bytes after a {writer.name}"
            )
        if not isinstance(record, dict):
            raise CorruptMessageError(f"{writer.name} did not decode to a record")
        return record


@lru_cache(maxsize=1)
def default_codec() -> AvroCodec:
    """One codec over the repository's schemas, shared by the processors of a process."""
    return AvroCodec()

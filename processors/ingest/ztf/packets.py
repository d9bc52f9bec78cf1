"""Read ZTF alert packets (Avro object container files) into one normalised view, ``ZtfAlert``.

Every schema version is read with the writer schema embedded in its file (fastavro) and then
mapped by field name, the way Avro schema resolution maps a writer record onto a reader record:
a field the writer lacks takes its default (``None``), a field the reader does not know is
skipped (or kept as text in ``extra``), and numbers are promoted int -> long -> float -> double
but never narrowed. So pre-2.0, 2.0, 3.0-3.5 and a future version all land in the same view;
a ``schemavsn`` outside :data:`KNOWN_SCHEMA_VERSIONS` is read the same way, with a warning.

Field differences handled (candidate record, as found in the public example packets):

- pre-2.0 (schema 1.x, no ``schemavsn``/``publisher``): no ``drb``; 1.8 adds ``rfid``,
  ``jdstartref``, ``jdendref``, ``nframesref``. Simulated 2016 packets carry ``alertId`` instead
  of ``objectId``, a negative ``candid``, an integer ``isdiffpos`` and JPEG stamps.
- 2.0 adds ``schemavsn``, ``publisher``, ``rbversion``; 3.0 adds zero-point and Gaia fields
  (``magzpsci``, ``neargaia``, ...); 3.1 adds ``exptime``; 3.3 adds ``drb``, ``drbversion``.

A packet that cannot be decoded raises :class:`AlertPacketError` whose ``reason`` is a short
code (``NotAvro``, ``TruncatedPacket``, ``UnreadablePacket``, ``NotAnAlert``,
``BadAlert``). In a multi-alert container, the alerts before the damage are still yielded, and
one unmappable record does not stop the others.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import numpy as np

from processors.core.exceptions import CorruptMessageError

__all__ = [
    "CUTOUT_FIELDS",
    "EXTRA_FIELDS",
    "JD_UNIX_EPOCH",
    "KNOWN_SCHEMA_VERSIONS",
    "AlertPacketError",
    "AlertReader",
    "ZtfAlert",
    "jd_to_utc",
    "read_alerts",
]

log = logging.getLogger(__name__)

_Warn = Callable[..., None]

JD_UNIX_EPOCH = 2440587.5
"""Julian date of 1970-01-01T00:00:00 UTC."""

KNOWN_SCHEMA_VERSIONS: frozenset[str] = frozenset({"2.0", "3.0", "3.1", "3.2", "3.3", "3.5"})
"""``schemavsn`` values this reader was verified against (pre-2.0 packets carry none)."""

CUTOUT_FIELDS: Mapping[str, str] = {
    "science": "cutoutScience",
    "template": "cutoutTemplate",
    "difference": "cutoutDifference",
}
"""Our cutout names -> the alert's field holding a ``{fileName, stampData}`` record."""

EXTRA_FIELDS: tuple[str, ...] = (
    "isdiffpos",
    "field",
    "rcid",
    "pid",
    "nid",
    "fwhm",
    "diffmaglim",
    "magap",
    "classtar",
    "magzpsci",
    "exptime",
    "ndethist",
    "ncovhist",
    "jdstarthist",
    "jdendhist",
    "sgscore1",
    "distpsnr1",
    "ssdistnr",
    "ssmagnr",
    "ssnamenr",
    "rbversion",
    "drbversion",
    "tooflag",
    "rfid",
    # the pipeline's own cross-matches (processors.detect.ztf_context)
    "objectidps1",
    "srmag1",
    "neargaia",
    "maggaia",
    "neargaiabright",
    "maggaiabright",
    "distnr",
    "magnr",
)
"""Candidate fields kept (as text, when present) in ``ZtfAlert.extra`` for provenance."""


class AlertPacketError(CorruptMessageError):
    """A packet (or one alert in it) cannot be read; ``reason`` is a short, stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ZtfAlert:
    """One alert in the normalised view, whatever schema version wrote it.

    Invariants: ``observed_at`` is ``jd_to_utc(jd)`` (timezone-aware UTC); ``cutouts`` holds
    only the stamps the packet carries (keys among ``science``/``template``/``difference``,
    values the raw ``stampData``: gzip-compressed FITS, plain FITS, or JPEG in the oldest
    simulated packets); optional fields absent from the writer schema are ``None``.
    """

    object_id: str | None
    candid: int
    schemavsn: str | None
    jd: float
    observed_at: datetime
    ra: float
    dec: float
    magpsf: float | None
    sigmapsf: float | None
    fid: int | None
    rb: float | None
    drb: float | None
    nbad: int | None
    programid: int | None
    cutouts: dict[str, bytes] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def schema_label(self) -> str:
        """``schemavsn``, or ``pre-2.0`` for the packets that predate the field."""
        return self.schemavsn if self.schemavsn is not None else "pre-2.0"


def jd_to_utc(jd: float) -> datetime:
    """Julian date -> UTC datetime, exact to the microsecond (JD 2440587.5 is the unix epoch).

    >>> jd_to_utc(2440587.5).isoformat()
    '1970-01-01T00:00:00+00:00'
    """
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=jd - JD_UNIX_EPOCH)


class AlertReader:
    """Reads packets into :class:`ZtfAlert`; logs each unknown schema version once per reader."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def read(self, data: bytes) -> Iterator[ZtfAlert | AlertPacketError]:
        """Yield each alert of one Avro container in container order, or, for a record that
        decodes but cannot be mapped (no candidate, no jd/ra/dec), an :class:`AlertPacketError`
        in its place; the next records are still read.

        Raises :class:`AlertPacketError` when the container itself is damaged (not Avro,
        truncated, bytes that do not match the writer schema); the alerts before the damage
        have been yielded already.
        """
        try:
            reader = fastavro.reader(io.BytesIO(data))
            writer_schema = reader.writer_schema
        except Exception as exc:  # fastavro raises ValueError, KeyError, UnicodeDecodeError, ...
            raise _packet_error(exc, header=True) from exc
        if not isinstance(writer_schema, dict):
            raise AlertPacketError("NotAnAlert", "writer schema is not a record")
        types = _candidate_types(writer_schema)
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except Exception as exc:
                raise _packet_error(exc, header=False) from exc
            try:
                alert = _to_alert(record, types, self._warn_once)
            except AlertPacketError as exc:
                yield exc
                continue
            self._check_version(alert, writer_schema)
            yield alert

    def _check_version(self, alert: ZtfAlert, writer_schema: dict[str, Any]) -> None:
        version = alert.schemavsn
        if version is None or version in KNOWN_SCHEMA_VERSIONS:
            return
        self._warn_once(
            f"version {version}",
            "ZTF alert schema version %r (writer schema %r) is not among the verified versions "
            "%s; reading it by its writer schema and mapping fields by name",
            version,
            writer_schema.get("version"),
            sorted(KNOWN_SCHEMA_VERSIONS),
        )

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)


def read_alerts(data: bytes) -> Iterator[ZtfAlert]:
    """Yield the alerts of one packet; raise :class:`AlertPacketError` at the first bad one."""
    for item in AlertReader().read(data):
        if isinstance(item, AlertPacketError):
            raise item
        yield item


def _packet_error(exc: Exception, *, header: bool) -> AlertPacketError:
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, UnicodeDecodeError):
        return AlertPacketError(
            "UnreadablePacket", f"bytes do not match the embedded writer schema ({detail})"
        )
    if isinstance(exc, EOFError):
        return AlertPacketError("TruncatedPacket", f"packet ends inside a record ({detail})")
    if header:
        return AlertPacketError("NotAvro", f"not an Avro object container file ({detail})")
    if "sync marker" in str(exc):
        return AlertPacketError("TruncatedPacket", f"packet ends inside a block ({detail})")
    return AlertPacketError("UnreadablePacket", f"cannot decode alert record ({detail})")


def _candidate_types(writer_schema: dict[str, Any]) -> dict[str, str]:
    """Candidate field name -> its Avro primitive type in the writer schema (null stripped)."""
    named: dict[str, dict[str, Any]] = {}

    def collect(schema: Any) -> None:
        if isinstance(schema, list):
            for branch in schema:
                collect(branch)
        elif isinstance(schema, dict):
            if schema.get("type") == "record":
                named[str(schema.get("name", "")).rsplit(".", 1)[-1]] = schema
                for f in schema.get("fields", []):
                    collect(f.get("type"))
            elif schema.get("type") == "array":
                collect(schema.get("items"))

    collect(writer_schema)
    candidate = named.get("candidate")
    types: dict[str, str] = {}
    for f in (candidate or {}).get("fields", []):
        branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
        kinds = [b for b in branches if b != "null"]
        if len(kinds) == 1 and isinstance(kinds[0], str):
            types[f["name"]] = kinds[0]
    return types


def _to_alert(record: object, types: Mapping[str, str], warn: _Warn) -> ZtfAlert:
    if not isinstance(record, dict):
        raise AlertPacketError("NotAnAlert", "packet record is not a record")
    candidate = record.get("candidate")
    if not isinstance(candidate, dict):
        raise AlertPacketError("NotAnAlert", "packet has no candidate record")
    candid = _required_int(record, "candid", candidate)
    jd = _required_float(candidate, "jd")
    ra = _required_float(candidate, "ra")
    dec = _required_float(candidate, "dec")
    if not (0.0 <= ra <= 360.0 and -90.0 <= dec <= 90.0):
        raise AlertPacketError("BadAlert", f"candid {candid}: position ra={ra} dec={dec} invalid")
    cutouts: dict[str, bytes] = {}
    for name, field_name in CUTOUT_FIELDS.items():
        cutout = record.get(field_name)
        stamp = cutout.get("stampData") if isinstance(cutout, dict) else None
        if isinstance(stamp, bytes) and stamp:
            cutouts[name] = stamp
    extra = {
        name: _as_text(candidate[name], types.get(name))
        for name in EXTRA_FIELDS
        if _is_scalar(candidate.get(name))
    }
    for name in ("publisher", "alertId"):
        if _is_scalar(record.get(name)):
            extra[name] = _as_text(record[name], None)
    return ZtfAlert(
        object_id=_optional(record, "objectId", str, warn),
        candid=candid,
        schemavsn=_optional(record, "schemavsn", str, warn),
        jd=jd,
        observed_at=jd_to_utc(jd),
        ra=ra,
        dec=dec,
        magpsf=_optional(candidate, "magpsf", float, warn),
        sigmapsf=_optional(candidate, "sigmapsf", float, warn),
        fid=_optional(candidate, "fid", int, warn),
        rb=_optional(candidate, "rb", float, warn),
        drb=_optional(candidate, "drb", float, warn),
        nbad=_optional(candidate, "nbad", int, warn),
        programid=_optional(candidate, "programid", int, warn),
        cutouts=cutouts,
        extra=extra,
    )


def _promote(value: Any, kind: type) -> Any:
    """Avro promotion rules: int -> float allowed; float -> int, text -> number refused."""
    if value is None or isinstance(value, bool):
        return None
    if kind is float and isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if kind is int and isinstance(value, int):
        return value
    if kind is str and isinstance(value, str):
        return value
    return None


def _optional(record: Mapping[str, Any], name: str, kind: type, warn: _Warn) -> Any:
    value = record.get(name)
    promoted = _promote(value, kind)
    if value is not None and promoted is None:
        warn(
            f"field {name} {type(value).__name__}",
            "ZTF alert field %r holds a %s where a %s is expected; read as missing",
            name,
            type(value).__name__,
            kind.__name__,
        )
    return promoted


def _required_float(candidate: Mapping[str, Any], name: str) -> float:
    value = _promote(candidate.get(name), float)
    if value is None:
        raise AlertPacketError(
            "BadAlert", f"candidate.{name} is {candidate.get(name)!r}; a finite number is needed"
        )
    return float(value)


def _required_int(record: Mapping[str, Any], name: str, candidate: Mapping[str, Any]) -> int:
    value = _promote(record.get(name, candidate.get(name)), int)
    if value is None:
        raise AlertPacketError("BadAlert", f"alert has no integer {name}")
    return int(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _as_text(value: Any, avro_type: str | None) -> str:
    """Text for provenance; Avro ``float`` (32-bit) values print at their own precision."""
    if isinstance(value, float) and avro_type == "float":
        return str(np.float32(value))
    return str(value)

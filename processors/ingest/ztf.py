"""The ZTF alert source: public API and the ``ztf:`` source spec the CLI accepts.

Spec syntax (``skyloop run --source SPEC``)::

    ztf:PATH[?OPTIONS]                          packet files: a directory (its *.avro), a file,
                                                or a glob such as ztf:alerts/2024*/*.avro
    ztf:kafka://HOST:PORT[,HOST:PORT]/TOPIC[?OPTIONS]
                                                a Kafka topic, one packet per message

    OPTIONS = key=value pairs joined by '&':
      every source: cutout=difference|science|template|triplet, min_rb=0..1, min_drb=0..1,
                    max_nbad=INT>=0, name=TEXT
      files:        watch=true|false, poll_interval_s=SECONDS
      kafka:        group_id=TEXT (default skyloop-ingest-NAME), max_messages=INT>=1,
                    idle_timeout_s=SECONDS, commit=on_next|manual

A ``?`` starts the options only when what follows is ``key=value`` pairs, so a glob may use
``?`` as a wildcard. Keyword arguments of :func:`ztf_source_from_spec` (e.g. ``stop=event``)
are defaults that the spec's options override.

Counters: both sources expose ``stats`` (:class:`ZtfStats`): packets taken and failed, alerts
read, images yielded, alerts cut per quality-cut reason (``min_rb``, ``min_drb:missing``, ...)
and failures per ``error_class``. A cut alert yields nothing, so the ingest processor should
report ``source.stats.snapshot()`` (a flat ``dict[str, int]``) in its metrics and summary;
the sources also log it when an iteration ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

from processors.core.exceptions import ConfigError
from processors.ingest.ztf_cutouts import CUTOUT_MODES, CutoutError, CutoutMode, alert_to_image
from processors.ingest.ztf_files import ZtfFileSource
from processors.ingest.ztf_packets import (
    KNOWN_SCHEMA_VERSIONS,
    AlertPacketError,
    AlertReader,
    ZtfAlert,
    jd_to_utc,
    read_alerts,
)
from processors.ingest.ztf_stream import QualityCuts, ZtfStats
from processors.ingest.ztf_topic import COMMIT_MODES, ZtfTopicSource

__all__ = [
    "CUTOUT_MODES",
    "KNOWN_SCHEMA_VERSIONS",
    "AlertPacketError",
    "AlertReader",
    "CutoutError",
    "CutoutMode",
    "QualityCuts",
    "ZtfAlert",
    "ZtfFileSource",
    "ZtfStats",
    "ZtfTopicSource",
    "alert_to_image",
    "jd_to_utc",
    "read_alerts",
    "ztf_source_from_spec",
]

SCHEME = "ztf:"
_OPTIONS = re.compile(r"^[A-Za-z_]+=[^&]*(&[A-Za-z_]+=[^&]*)*$")
_QUALITY_KEYS = ("min_rb", "min_drb", "max_nbad")
_COMMON_KEYS = ("cutout", *_QUALITY_KEYS, "name")
_FILE_KEYS = (*_COMMON_KEYS, "watch", "poll_interval_s")
_TOPIC_KEYS = (*_COMMON_KEYS, "group_id", "max_messages", "idle_timeout_s", "commit")


def _choice(accepted: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(key: str, text: str) -> str:
        if text not in accepted:
            raise ConfigError(f"{key}={text!r}: accepted values are {', '.join(accepted)}")
        return text

    return parse


def _number(kind: type, low: float, high: float | None = None) -> Callable[[str, str], Any]:
    def parse(key: str, text: str) -> Any:
        span = f"in [{low}, {high}]" if high is not None else f">= {low}"
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value != value or value < low or (high is not None and value > high):
            raise ConfigError(f"{key}={text!r}: accepted values are {kind.__name__}s {span}")
        return value

    return parse


def _positive(key: str, text: str) -> float:
    value = _number(float, 0.0)(key, text)
    if value == 0:
        raise ConfigError(f"{key}={text!r}: accepted values are numbers > 0")
    return float(value)


def _flag(key: str, text: str) -> bool:
    value = text.lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key}={text!r}: accepted values are true, false")
    return value in ("true", "1", "yes")


def _text(key: str, text: str) -> str:
    if not text:
        raise ConfigError(f"{key}: empty; accepted values are non-empty text")
    return text


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "cutout": _choice(CUTOUT_MODES),
    "min_rb": _number(float, 0.0, 1.0),
    "min_drb": _number(float, 0.0, 1.0),
    "max_nbad": _number(int, 0),
    "name": _text,
    "watch": _flag,
    "poll_interval_s": _positive,
    "group_id": _text,
    "max_messages": _number(int, 1),
    "idle_timeout_s": _positive,
    "commit": _choice(COMMIT_MODES),
}


def _split(spec: str) -> tuple[str, dict[str, str]]:
    target, sep, query = spec.rpartition("?")
    if not sep or not _OPTIONS.match(query):
        return spec, {}
    options: dict[str, str] = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key in options:
            raise ConfigError(f"source option {key!r} is given twice in {spec!r}")
        options[key] = unquote(value)
    return target, options


def ztf_source_from_spec(spec: str, **kw: Any) -> ZtfFileSource | ZtfTopicSource:
    """Build a ZTF source from ``ztf:PATH[?OPTIONS]`` or ``ztf:kafka://SERVERS/TOPIC[?OPTIONS]``.

    Raises :class:`ConfigError` naming the bad key and the accepted values (or keys).
    """
    if not spec.startswith(SCHEME):
        raise ConfigError(f"source={spec!r}: a ZTF source spec starts with {SCHEME!r}")
    target, options = _split(spec[len(SCHEME) :])
    kafka = target.startswith("kafka://")
    accepted = _TOPIC_KEYS if kafka else _FILE_KEYS
    for key in options:
        if key not in accepted:
            kind = "kafka" if kafka else "file"
            raise ConfigError(
                f"source option {key!r} is unknown for a ZTF {kind} source; "
                f"accepted keys are {', '.join(accepted)}"
            )
    args = {**kw, **{key: _PARSERS[key](key, value) for key, value in options.items()}}
    cuts = {key: args.pop(key) for key in _QUALITY_KEYS if key in args}
    if cuts:
        args["quality"] = replace(args.get("quality") or QualityCuts(), **cuts)
    if not kafka:
        if not target:
            raise ConfigError("source path: empty; give ztf:DIR, ztf:FILE.avro or ztf:GLOB")
        return ZtfFileSource(target, **args)
    servers, _, topic = target[len("kafka://") :].partition("/")
    if not servers or not topic or "/" in topic:
        raise ConfigError(
            f"source={spec!r}: accepted form is ztf:kafka://HOST:PORT[,HOST:PORT]/TOPIC[?OPTIONS]"
        )
    group_id = args.pop("group_id", None) or f"skyloop-ingest-{args.get('name', 'ztf')}"
    return ZtfTopicSource(servers, topic, group_id, **args)

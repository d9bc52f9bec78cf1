"""The ``ztf:`` source spec: ``ztf:PATH[?OPTIONS]`` or ``ztf:kafka://SERVERS/TOPIC[?OPTIONS]``.

The syntax and every option are listed in the package docstring (:mod:`processors.ingest.ztf`).
Options are read by the one spec-option parser (:mod:`processors.ingest.sources.options`);
the keys accepted depend on the target (files or a topic), and an unknown one is named with
the accepted keys in the order below. Keyword arguments of :func:`ztf_source_from_spec`
(e.g. ``stop=event``) are defaults that the spec's options override.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from processors.core.exceptions import ConfigError
from processors.ingest.sources.options import (
    OptionParser,
    choice,
    flag,
    integer,
    number,
    positive,
    split_options,
    text,
    typed_options,
)
from processors.ingest.ztf.alert_items import QualityCuts
from processors.ingest.ztf.cutouts import CUTOUT_MODES
from processors.ingest.ztf.files import ZtfFileSource
from processors.ingest.ztf.topic import COMMIT_MODES, ZtfTopicSource

__all__ = ["SCHEME", "ingest_ztf_source", "ztf_source_from_spec"]

SCHEME = "ztf:"
_QUALITY_KEYS = ("min_rb", "min_drb", "max_nbad")
_COMMON: dict[str, OptionParser] = {
    "cutout": choice(*CUTOUT_MODES),
    "min_rb": number(0.0, 1.0),
    "min_drb": number(0.0, 1.0),
    "max_nbad": integer(0),
    "name": text,
}
_FILE_OPTIONS: dict[str, OptionParser] = {**_COMMON, "watch": flag, "poll_interval_s": positive}
_TOPIC_OPTIONS: dict[str, OptionParser] = {
    **_COMMON,
    "group_id": text,
    "max_messages": integer(1),
    "idle_timeout_s": positive,
    "commit": choice(*COMMIT_MODES),
}


def ztf_source_from_spec(spec: str, **kw: Any) -> ZtfFileSource | ZtfTopicSource:
    """Build a ZTF source from ``ztf:PATH[?OPTIONS]`` or ``ztf:kafka://SERVERS/TOPIC[?OPTIONS]``.

    Raises :class:`ConfigError` naming the bad key and the accepted values (or keys).
    """
    if not spec.startswith(SCHEME):
        raise ConfigError(f"source={spec!r}: a ZTF source spec starts with {SCHEME!r}")
    target, options = split_options(spec[len(SCHEME) :])
    kafka = target.startswith("kafka://")
    parsers = _TOPIC_OPTIONS if kafka else _FILE_OPTIONS
    what = f"a ZTF {'kafka' if kafka else 'file'} source"
    args = {**kw, **typed_options("ztf", options, parsers, unknown_for=what)}
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


def ingest_ztf_source(
    spec: str, *, stop: threading.Event | None = None
) -> ZtfFileSource | ZtfTopicSource:
    """The ZTF source as the ingest processor runs it: a ``ztf:kafka://`` topic defaults to
    ``commit=manual`` (:func:`~processors.ingest.processor.run_ingest` commits its offsets only
    after the producer delivered what was made from them; the spec may still say
    ``commit=on_next``)."""
    if spec[len(SCHEME) :].startswith("kafka://"):
        return ztf_source_from_spec(spec, stop=stop, commit="manual")
    return ztf_source_from_spec(spec, stop=stop)

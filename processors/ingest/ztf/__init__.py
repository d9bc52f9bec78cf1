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

from processors.ingest.ztf.alert_items import QualityCuts, ZtfStats
from processors.ingest.ztf.cutouts import CUTOUT_MODES, CutoutError, CutoutMode, alert_to_image
from processors.ingest.ztf.files import ZtfFileSource
from processors.ingest.ztf.packets import (
    KNOWN_SCHEMA_VERSIONS,
    AlertPacketError,
    AlertReader,
    ZtfAlert,
    jd_to_utc,
    read_alerts,
)
from processors.ingest.ztf.spec import SCHEME, ztf_source_from_spec
from processors.ingest.ztf.topic import ZtfTopicSource

__all__ = [
    "CUTOUT_MODES",
    "KNOWN_SCHEMA_VERSIONS",
    "SCHEME",
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

"""The one registry of source specs: a spec's name -> the family that builds its source.

Spec syntax: ``NAME[:ARG][?key=value&...]`` (options: :mod:`processors.ingest.sources.options`).
The names, by family:

- synthetic (:mod:`processors.ingest.synthetic`): ``synthetic`` (keys: seed, anomaly_rate,
  drift_after, drifts, cycle, kind, size, name, surveys) and ``hubble`` (keys: seed, size,
  name); ARG is ignored;
- alert packets (:mod:`processors.ingest.ztf`): ``ztf`` (ARG = a folder, file or glob of
  packets, or ``kafka://SERVERS/TOPIC``);
- local files (:mod:`processors.ingest.files`): ``dir`` (ARG = a folder, file or glob of
  FITS/PNG/JPEG/TIFF images; keys: watch, poll_interval_s, name, survey);
- survey clients (:mod:`processors.ingest.surveys`): ``sdss``, ``decals``, ``panstarrs``,
  ``ztf-irsa``, ``hst``, ``galaxyzoo`` (ARG = a CSV of targets or ``cone:RA,DEC,RADIUS``).

Invariants: :data:`SOURCE_NAMES` lists every accepted name in this order; a spec's name is
what comes before its first ``:`` (and its first ``?``), stripped; an unknown name or a bad
option raises :class:`ConfigError` naming it and what is accepted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

from processors.core.exceptions import ConfigError
from processors.ingest.files.folder import folder_source_from_spec
from processors.ingest.sources.base import BaseSource
from processors.ingest.surveys.spec import SURVEY_APIS, survey_source_from_spec
from processors.ingest.synthetic.spec import hubble_from_spec, synthetic_from_spec
from processors.ingest.ztf.spec import ingest_ztf_source

__all__ = ["SOURCES", "SOURCE_NAMES", "SourceBuilder", "source_from_spec", "spec_name"]

SourceBuilder = Callable[..., BaseSource]
"""``builder(spec, stop=event_or_None) -> source``."""

SOURCES: dict[str, SourceBuilder] = {
    "synthetic": synthetic_from_spec,
    "hubble": hubble_from_spec,
    "ztf": ingest_ztf_source,
    "dir": folder_source_from_spec,
    **{name: partial(survey_source_from_spec, api=api) for name, api in SURVEY_APIS.items()},
}
SOURCE_NAMES = tuple(SOURCES)


def spec_name(spec: str) -> str:
    """The name a spec starts with.

    >>> spec_name("sdss:targets.csv?size=64"), spec_name("synthetic?seed=1")
    ('sdss', 'synthetic')
    """
    return spec.partition("?")[0].partition(":")[0].strip()


def source_from_spec(spec: str, *, stop: threading.Event | None = None) -> BaseSource:
    """The source a spec names, set up for the ingest processor.

    ``stop`` is handed to sources that may block waiting for input (a watched folder, a Kafka
    topic, a survey backing off), so a stop request ends them between items. A
    ``ztf:kafka://`` source defaults to ``commit=manual``: :func:`~processors.ingest.processor.
    run_ingest` commits its offsets only after the producer has delivered what was made from
    them (the spec may still say ``commit=on_next``).
    """
    name = spec_name(spec)
    build = SOURCES.get(name)
    if build is None:
        raise ConfigError(
            f"unknown source {name!r} in {spec!r}; accepted: {', '.join(SOURCE_NAMES)}"
        )
    return build(spec, stop=stop)

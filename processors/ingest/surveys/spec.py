"""Survey source specs: ``SURVEY:TARGETS.csv[?OPTIONS]`` for the survey clients.

Surveys: ``sdss``, ``decals``, ``panstarrs``, ``ztf-irsa``, ``hst``, ``galaxyzoo`` (each
module's docstring cites the service's documentation and lists its own options). Options every
survey takes:

- ``base_url``: the service root (default: the survey's public endpoint), e.g. a mirror or a
  local server in tests;
- ``name``: the source name (default: the survey's name);
- ``limit``, ``catalog_url``: for ``SURVEY:cone:RA,DEC,RADIUS_ARCMIN`` targets, the number
  of galaxies and the SkyServer SQL search root (processors/ingest/surveys/cone);
- ``rounds``: how many times a failing target is tried before it is a dead letter (default 3);
- the :class:`~processors.ingest.surveys.http.HttpPolicy` fields: ``connect_timeout_s``,
  ``read_timeout_s``, ``total_timeout_s``, ``rate_per_s``, ``burst``, ``attempts``,
  ``backoff_s``, ``max_backoff_s``, ``breaker_failures``, ``breaker_reset_s``.

Examples: ``sdss:targets.csv?scale=0.4&size=64&rate_per_s=2``,
``decals:cone:150.1,2.2,3?limit=50&format=jpeg``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import fields
from typing import Any

from processors.core.exceptions import ConfigError
from processors.ingest.counters import SourceCounters
from processors.ingest.sources.options import (
    integer,
    number,
    positive,
    split_options,
    text,
    typed_options,
)
from processors.ingest.surveys.cone import DEFAULT_CATALOG_URL, ConeQuery, parse_cone
from processors.ingest.surveys.decals import DecalsCutouts
from processors.ingest.surveys.galaxy_zoo import GalaxyZooCutouts
from processors.ingest.surveys.hst import HstCutouts
from processors.ingest.surveys.http import HttpPolicy, SurveyHttp
from processors.ingest.surveys.panstarrs import PanStarrsCutouts
from processors.ingest.surveys.sdss import SdssCutouts
from processors.ingest.surveys.source import SurveyApi, SurveySource
from processors.ingest.surveys.ztf_irsa import ZtfIrsaCutouts

__all__ = ["SURVEY_APIS", "survey_source_from_spec"]

# spec name -> the survey's cutout interface (its options and default service root)
SURVEY_APIS: dict[str, type[SurveyApi]] = {
    "sdss": SdssCutouts,
    "decals": DecalsCutouts,
    "panstarrs": PanStarrsCutouts,
    "ztf-irsa": ZtfIrsaCutouts,
    "hst": HstCutouts,
    "galaxyzoo": GalaxyZooCutouts,
}


def _policy_parsers() -> dict[str, Any]:
    parsers: dict[str, Any] = {}
    for f in fields(HttpPolicy):
        if f.name == "max_bytes":
            continue
        if f.type in (int, "int"):
            parsers[f.name] = integer(1)
        elif f.name.startswith(("connect", "read", "total", "rate")):
            parsers[f.name] = positive
        else:
            parsers[f.name] = number(0.0)
    return parsers


_COMMON = {
    "base_url": text,
    "name": text,
    "rounds": integer(1, 100),
    "limit": integer(1, 10_000),
    "catalog_url": text,
    **_policy_parsers(),
}


def survey_source_from_spec(
    spec: str, *, api: type[SurveyApi], stop: threading.Event | None = None
) -> SurveySource:
    """The source of ``SURVEY:TARGETS[?OPTIONS]`` fetching through ``api`` (the survey the
    registry found for the spec's name); :class:`ConfigError` names a bad key or value."""
    kind, _, rest = spec.partition(":")
    target, raw = split_options(rest)
    if not target:
        raise ConfigError(f"source {kind}: no targets file; give {kind}:TARGETS.csv[?OPTIONS]")
    options = typed_options(kind, raw, {**_COMMON, **api.options})
    common = {k: options.pop(k) for k in list(options) if k in _COMMON}
    client = api(**options)
    policy = HttpPolicy(**{k: v for k, v in common.items() if k in _policy_parsers()})
    # back-off waits end early on stop, so Ctrl-C never waits out a long Retry-After
    sleep = stop.wait if stop is not None else time.sleep
    base_url = common.get("base_url") or client.default_base_url
    http = SurveyHttp(base_url, policy, SourceCounters(), sleep=sleep)
    targets: str | ConeQuery = target
    catalog = None
    if target.startswith("cone:"):
        targets = parse_cone(target[len("cone:") :], common.get("limit", 100))
        catalog_url = common.get("catalog_url", DEFAULT_CATALOG_URL)
        catalog = SurveyHttp(catalog_url, policy, http.counters, sleep=sleep)
    elif "limit" in common or "catalog_url" in common:
        raise ConfigError(f"source {kind}: limit and catalog_url apply to {kind}:cone:... only")
    return SurveySource(
        client,
        targets,
        http,
        name=common.get("name", kind),
        rounds=common.get("rounds", 3),
        stop=stop,
        catalog=catalog,
    )

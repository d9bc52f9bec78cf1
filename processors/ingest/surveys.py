"""Survey source specs: ``SURVEY:TARGETS.csv[?OPTIONS]`` for the survey clients.

Surveys: ``sdss``, ``decals``, ``panstarrs``, ``ztf-irsa``, ``hst``, ``galaxyzoo`` (each
module's docstring cites the service's documentation and lists its own options). Options every
survey takes:

- ``base_url``: the service root (default: the survey's public endpoint), e.g. a mirror or a
  local server in tests;
- ``name``: the source name (default: the survey's name);
- ``limit``, ``catalog_url``: for ``SURVEY:cone:RA,DEC,RADIUS_ARCMIN`` targets, the number
  of galaxies and the SkyServer SQL search root (processors/ingest/cone);
- ``rounds``: how many times a failing target is tried before it is a dead letter (default 3);
- the :class:`~processors.ingest.survey_http.HttpPolicy` fields: ``connect_timeout_s``,
  ``read_timeout_s``, ``total_timeout_s``, ``rate_per_s``, ``burst``, ``attempts``,
  ``backoff_s``, ``max_backoff_s``, ``breaker_failures``, ``breaker_reset_s``.

Examples: ``sdss:targets.csv?scale=0.4&size=64&rate_per_s=2``,
``decals:cone:150.1,2.2,3?limit=50&format=jpeg``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import fields
from importlib import import_module
from typing import Any

from processors.core.exceptions import ConfigError
from processors.ingest.cone import DEFAULT_CATALOG_URL, ConeQuery, parse_cone
from processors.ingest.counters import SourceCounters
from processors.ingest.spec_options import (
    integer,
    number,
    positive,
    split_options,
    text,
    typed_options,
)
from processors.ingest.survey_http import HttpPolicy, SurveyHttp
from processors.ingest.survey_source import SurveySource

__all__ = ["SURVEYS", "survey_source_from_spec"]

# spec name -> (module, api class, default base URL or a function of the api's options)
SURVEYS: dict[str, tuple[str, str, Callable[[dict[str, Any]], str]]] = {
    "sdss": (
        "processors.ingest.sdss",
        "SdssCutouts",
        lambda o: import_module("processors.ingest.sdss").default_base_url(
            o.get("release", "dr18")
        ),
    ),
    "decals": ("processors.ingest.decals", "DecalsCutouts", lambda o: _const("decals")),
    "panstarrs": ("processors.ingest.panstarrs", "PanStarrsCutouts", lambda o: _const("panstarrs")),
    "ztf-irsa": ("processors.ingest.ztf_irsa", "ZtfIrsaCutouts", lambda o: _const("ztf-irsa")),
    "hst": ("processors.ingest.hst", "HstCutouts", lambda o: _const("hst")),
    "galaxyzoo": (
        "processors.ingest.galaxy_zoo",
        "GalaxyZooCutouts",
        lambda o: _const("decals") if o.get("cutout") == "decals" else _const("sdss"),
    ),
}


def _const(kind: str) -> str:
    if kind == "sdss":
        return str(import_module("processors.ingest.sdss").default_base_url())
    return str(import_module(SURVEYS[kind][0]).DEFAULT_BASE_URL)


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


def survey_source_from_spec(spec: str, *, stop: threading.Event | None = None) -> SurveySource:
    """The survey source a spec names; :class:`ConfigError` names a bad key or value."""
    kind, _, rest = spec.partition(":")
    if kind not in SURVEYS:
        raise ConfigError(f"unknown survey {kind!r}; accepted: {', '.join(SURVEYS)}")
    module_name, class_name, base_url_for = SURVEYS[kind]
    module = import_module(module_name)
    target, raw = split_options(rest)
    if not target:
        raise ConfigError(f"source {kind}: no targets file; give {kind}:TARGETS.csv[?OPTIONS]")
    options = typed_options(kind, raw, {**_COMMON, **module.OPTIONS})
    common = {k: options.pop(k) for k in list(options) if k in _COMMON}
    api = getattr(module, class_name)(**options)
    policy = HttpPolicy(**{k: v for k, v in common.items() if k in _policy_parsers()})
    # back-off waits end early on stop, so Ctrl-C never waits out a long Retry-After
    sleep = stop.wait if stop is not None else time.sleep
    base_url = common.get("base_url") or base_url_for(options)
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
        api,
        targets,
        http,
        name=common.get("name", kind),
        rounds=common.get("rounds", 3),
        stop=stop,
        catalog=catalog,
    )

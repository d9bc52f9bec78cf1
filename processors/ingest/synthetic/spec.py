"""The specs of the synthetic family: ``synthetic[?OPTIONS]`` and ``hubble[?OPTIONS]``.

Options are read by the one spec-option parser (:mod:`processors.ingest.sources.options`);
values are checked by the sources themselves (e.g. ``anomaly_rate`` in [0, 1]). Invariants: an
``ARG`` after ``NAME:`` is ignored, as it always was; text after the ``?`` that is not
``key=value`` pairs joined by ``&`` is a :class:`ConfigError`, never silently dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from processors.core.exceptions import ConfigError
from processors.ingest.sources.options import (
    OptionParser,
    integer,
    number,
    split_options,
    typed_options,
    verbatim,
)
from processors.ingest.synthetic.hubble import HubbleDeepField
from processors.ingest.synthetic.sky import SyntheticSky

__all__ = ["HUBBLE_OPTIONS", "SYNTHETIC_OPTIONS", "hubble_from_spec", "synthetic_from_spec"]

SYNTHETIC_OPTIONS: dict[str, OptionParser] = {
    "seed": integer(),
    "anomaly_rate": number(),
    "drift_after": integer(),
    "drifts": verbatim,
    "cycle": integer(),
    "kind": verbatim,
    "size": integer(),
    "name": verbatim,
    "surveys": verbatim,
}
HUBBLE_OPTIONS: dict[str, OptionParser] = {"seed": integer(), "size": integer(), "name": verbatim}


def _options(kind: str, spec: str, parsers: Mapping[str, OptionParser]) -> dict[str, Any]:
    _, sep, query = spec.partition("?")
    if not sep or not query:
        return {}
    target, options = split_options(spec)
    if not options or "?" in target:
        raise ConfigError(
            f"source {kind!r}: options {query!r} are not key=value pairs joined by '&'; "
            f"accepted keys are {', '.join(sorted(parsers))}"
        )
    try:
        return typed_options(kind, options, parsers)
    except ConfigError as exc:  # name the source, as the unknown-key error does
        message = str(exc)
        raise ConfigError(
            message if message.startswith("source ") else f"source {kind!r}: {message}"
        ) from None


def synthetic_from_spec(spec: str, *, stop: threading.Event | None = None) -> SyntheticSky:
    """The synthetic sky of ``synthetic[?OPTIONS]`` (it never waits, so ``stop`` is unused)."""
    return SyntheticSky(**_options("synthetic", spec, SYNTHETIC_OPTIONS))


def hubble_from_spec(spec: str, *, stop: threading.Event | None = None) -> HubbleDeepField:
    """Hubble Deep Field cutouts of ``hubble[?OPTIONS]`` (``stop`` is unused)."""
    return HubbleDeepField(**_options("hubble", spec, HUBBLE_OPTIONS))

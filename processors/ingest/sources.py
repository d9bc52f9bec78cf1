"""Build image sources from specs such as ``synthetic``, ``hubble`` or ``ztf:DIR``.

Spec syntax: ``NAME[:ARG][?key=value&...]``. Known names: ``synthetic`` (keys: seed,
anomaly_rate, drift_after, size), ``hubble`` (keys: seed, size), ``ztf`` (ARG = a folder, file
or glob of alert packets; keys documented in processors/ingest/ztf*). Bad specs raise
:class:`ConfigError` naming the key and the accepted values.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from itertools import cycle
from typing import Any
from urllib.parse import parse_qsl

from processors.core.exceptions import ConfigError
from processors.ingest.base import ImageSource, SourceItem, is_endless
from processors.ingest.bundled import HubbleDeepField
from processors.ingest.synthetic import SyntheticSky

__all__ = ["SOURCE_NAMES", "Interleaved", "parse_source_spec", "source_from_spec"]

SOURCE_NAMES = ("synthetic", "hubble", "ztf")

_KEYS: dict[str, dict[str, type]] = {
    "synthetic": {"seed": int, "anomaly_rate": float, "drift_after": int, "size": int, "name": str},
    "hubble": {"seed": int, "size": int, "name": str},
}


def parse_source_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    head, _, query = spec.partition("?")
    kind, _, arg = head.partition(":")
    return kind.strip(), (arg or None), dict(parse_qsl(query, keep_blank_values=True))


def _typed(kind: str, options: dict[str, str]) -> dict[str, Any]:
    accepted = _KEYS[kind]
    out: dict[str, Any] = {}
    for key, raw in options.items():
        if key not in accepted:
            raise ConfigError(f"source {kind!r}: unknown key {key!r}; accepted: {sorted(accepted)}")
        try:
            out[key] = accepted[key](raw)
        except ValueError:
            raise ConfigError(
                f"source {kind!r}: {key}={raw!r} is not a valid {accepted[key].__name__}"
            ) from None
    return out


def source_from_spec(spec: str, *, stop: threading.Event | None = None) -> ImageSource:
    """The source a spec names, set up for the ingest processor.

    ``stop`` is handed to sources that may block waiting for input (a watched folder, a Kafka
    topic), so a stop request ends them between items. A ``ztf:kafka://`` source defaults to
    ``commit=manual``: :func:`~processors.ingest.processor.run_ingest` commits its offsets only
    after the producer has delivered what was made from them (the spec may still say
    ``commit=on_next``).
    """
    kind, _arg, options = parse_source_spec(spec)
    if kind == "synthetic":
        return SyntheticSky(**_typed(kind, options))
    if kind == "hubble":
        return HubbleDeepField(**_typed(kind, options))
    if kind == "ztf":
        from processors.ingest.ztf import SCHEME, ztf_source_from_spec

        if spec[len(SCHEME) :].startswith("kafka://"):
            return ztf_source_from_spec(spec, stop=stop, commit="manual")
        return ztf_source_from_spec(spec, stop=stop)
    raise ConfigError(f"unknown source {kind!r} in {spec!r}; accepted: {', '.join(SOURCE_NAMES)}")


class Interleaved:
    """Round-robin over several sources until each is exhausted (order is deterministic)."""

    def __init__(self, sources: Sequence[ImageSource]) -> None:
        if not sources:
            raise ConfigError("at least one source is needed")
        self.sources = list(sources)
        self.name = "+".join(s.name for s in sources)

    @property
    def endless(self) -> bool:
        """Endless as soon as one part is (see :func:`~processors.ingest.base.is_endless`)."""
        return any(is_endless(s) for s in self.sources)

    def __iter__(self) -> Iterator[SourceItem]:
        iterators = [iter(s) for s in self.sources]
        live = list(range(len(iterators)))
        for i in cycle(range(len(iterators))):
            if not live:
                return
            if i not in live:
                continue
            try:
                yield next(iterators[i])
            except StopIteration:
                live.remove(i)

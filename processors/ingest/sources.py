"""Build image sources from specs such as ``synthetic``, ``hubble`` or ``ztf:DIR``.

Spec syntax: ``NAME[:ARG][?key=value&...]``. Known names: ``synthetic`` (keys: seed,
anomaly_rate, drift_after, drifts, cycle, kind, size, name, surveys; see
processors/ingest/synthetic),
``hubble`` (keys: seed, size), ``ztf`` (ARG = a folder, file
or glob of alert packets; keys documented in processors/ingest/ztf*), ``dir`` (ARG = a folder,
file or glob of FITS/PNG/JPEG/TIFF images; keys: watch, poll_interval_s, name, survey; see
processors/ingest/folder) and the surveys ``sdss``, ``decals``, ``panstarrs``, ``ztf-irsa``,
``hst``, ``galaxyzoo`` (ARG = a CSV of targets; keys in processors/ingest/surveys and each
survey's module). Bad specs raise
:class:`ConfigError` naming the key and the accepted values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from processors.core.allocation import WeightedRoundRobin
from processors.core.exceptions import ConfigError
from processors.ingest.base import ImageSource, SourceItem, is_endless
from processors.ingest.bundled import HubbleDeepField
from processors.ingest.spec_options import flag, positive, split_options, text, typed_options
from processors.ingest.synthetic import SyntheticSky

__all__ = ["SOURCE_NAMES", "Interleaved", "parse_source_spec", "source_from_spec"]

SOURCE_NAMES = (
    "synthetic",
    "hubble",
    "ztf",
    "dir",
    "sdss",
    "decals",
    "panstarrs",
    "ztf-irsa",
    "hst",
    "galaxyzoo",
)

_KEYS: dict[str, dict[str, type]] = {
    "synthetic": {
        "seed": int,
        "anomaly_rate": float,
        "drift_after": int,
        "drifts": str,
        "cycle": int,
        "kind": str,
        "size": int,
        "name": str,
        "surveys": str,
    },
    "hubble": {"seed": int, "size": int, "name": str},
}


def parse_source_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    head, _, query = spec.partition("?")
    kind, _, arg = head.partition(":")
    # a '+' stays a '+' (e.g. drifts=60:+space), as in every other spec's options
    options = parse_qsl(query.replace("+", "%2B"), keep_blank_values=True)
    return kind.strip(), (arg or None), dict(options)


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
    if kind == "dir":
        return _folder_source(spec, stop)
    if kind in SOURCE_NAMES[4:]:
        from processors.ingest.surveys import survey_source_from_spec

        return survey_source_from_spec(spec, stop=stop)
    raise ConfigError(f"unknown source {kind!r} in {spec!r}; accepted: {', '.join(SOURCE_NAMES)}")


_DIR_OPTIONS = {"watch": flag, "poll_interval_s": positive, "name": text, "survey": text}


def _folder_source(spec: str, stop: threading.Event | None) -> ImageSource:
    from processors.ingest.folder import FolderSource

    target, options = split_options(spec[len("dir:") :])
    if not target:
        raise ConfigError("source dir: path empty; give dir:FOLDER, dir:FILE or dir:GLOB")
    return FolderSource(target, stop=stop, **typed_options("dir", options, _DIR_OPTIONS))


class Interleaved:
    """Draws from several sources until each is exhausted; deterministic order.

    By default draws are round-robin. A caller may set ``shares``: a function from the names of
    the sources still running to the share of draws each gets (a source left out, e.g. paused,
    is not drawn); draws then follow the shares by smooth weighted round robin
    (:class:`~processors.core.allocation.WeightedRoundRobin`), parts sharing a name taking turns.
    When no source has a share, iteration waits (``idle_s`` between looks) until one has or
    ``stop`` is set. A part with a ``ready()`` method that answers False (a survey whose
    breaker is open, or whose only targets left wait out their back-off) is not drawn from
    meanwhile, so one resting source never holds up the others.
    """

    def __init__(
        self,
        sources: Sequence[ImageSource],
        *,
        stop: threading.Event | None = None,
        idle_s: float = 0.2,
    ) -> None:
        if not sources:
            raise ConfigError("at least one source is needed")
        self.sources = list(sources)
        self.name = "+".join(s.name for s in sources)
        self.shares: Callable[[Sequence[str]], Mapping[str, float]] | None = None
        self.stop = stop
        self.idle_s = idle_s
        self.waits = 0

    @property
    def endless(self) -> bool:
        """Endless as soon as one part is (see :func:`~processors.ingest.base.is_endless`)."""
        return any(is_endless(s) for s in self.sources)

    def __iter__(self) -> Iterator[SourceItem]:
        live: dict[int, Iterator[SourceItem | None]] = {
            i: _steps(s) for i, s in enumerate(self.sources)
        }
        picker = WeightedRoundRobin()
        turns: dict[str, int] = {}
        while live:
            ready = [i for i in live if _ready(self.sources[i])]
            if not ready:  # e.g. every survey resting behind an open breaker
                if self.stop is not None and self.stop.is_set():
                    return
                self.waits += 1
                time.sleep(self.idle_s)
                continue
            names = sorted({self.sources[i].name for i in ready})
            if self.shares is None:
                shares: Mapping[str, float] = dict.fromkeys(names, 1.0)
            else:
                shares = {n: w for n, w in self.shares(names).items() if n in names and w > 0}
            if not shares:
                if self.stop is not None and self.stop.is_set():
                    return
                self.waits += 1
                time.sleep(self.idle_s)
                continue
            name = picker.pick(shares)
            parts = [i for i in ready if self.sources[i].name == name]
            index = parts[turns.get(name, 0) % len(parts)]
            turns[name] = turns.get(name, 0) + 1
            try:
                item = next(live[index])
            except StopIteration:
                del live[index]
                continue
            if item is not None:  # None: that part is resting (see ``steps``); draw again
                yield item


def _ready(source: ImageSource) -> bool:
    ready = getattr(source, "ready", None)
    return bool(ready()) if callable(ready) else True


def _steps(source: ImageSource) -> Iterator[SourceItem | None]:
    """A part's ``steps()`` when it has them (items, or None instead of waiting), else its items."""
    steps = getattr(source, "steps", None)
    return steps() if callable(steps) else iter(source)

"""Several sources drawn as one: :class:`Interleaved`, the composite the ingest processor runs.

Invariants: every part is drawn until it is exhausted, in a deterministic order; a part that
rests (``ready()`` False) is not drawn while it rests, so it never holds up the others; with
``shares`` set, draws follow the shares of the parts' names by smooth weighted round robin.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from processors.core.allocation import WeightedRoundRobin
from processors.core.exceptions import ConfigError
from processors.ingest.sources.base import BaseSource, ImageSource, is_endless
from processors.ingest.sources.items import SourceItem

__all__ = ["Interleaved"]


class Interleaved(BaseSource):
    """Draws from several sources until each is exhausted; deterministic order.

    By default draws are round-robin. A caller may set ``shares``: a function from the names of
    the sources still running to the share of draws each gets (a source left out, e.g. paused,
    is not drawn); draws then follow the shares by smooth weighted round robin
    (:class:`~processors.core.allocation.WeightedRoundRobin`), parts sharing a name taking turns.
    When no source has a share, iteration waits (``idle_s`` between looks) until one has or
    ``stop`` is set. A part that rests (:meth:`~processors.ingest.sources.base.BaseSource.ready`
    answers False: a survey whose breaker is open, or whose only targets left wait out their
    back-off) is not drawn from meanwhile, so one resting source never holds up the others.
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

    def parts(self) -> Sequence[ImageSource]:
        return self.sources

    @property
    def endless(self) -> bool:
        """Endless as soon as one part is (see :func:`~processors.ingest.sources.base.
        is_endless`)."""
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
    return source.ready() if isinstance(source, BaseSource) else True


def _steps(source: ImageSource) -> Iterator[SourceItem | None]:
    """A part's ``steps()`` (items, or None instead of waiting); a foreign part's items."""
    return source.steps() if isinstance(source, BaseSource) else iter(source)

"""The one base class of image sources, whose capabilities are declared data, not guessed.

A source is a named iterable of :data:`~processors.ingest.sources.items.SourceItem`; iteration
order is the publish order. Every source in this package derives from :class:`BaseSource`
and declares what it can do in its class's :attr:`BaseSource.capabilities` (a
:class:`Capabilities`); the only capability that depends on the configuration, whether
iteration may run forever, is the :attr:`BaseSource.endless` property. What callers use:

- ``stats`` (a :class:`SourceStats` or None): the source's own counters (e.g. quality cuts);
- ``commit()`` and ``deliver`` (only where ``capabilities.commits_after_delivery``): commit
  what was handed out once the caller's outputs made from it are delivered; ``deliver`` is a
  callable the caller sets that returns once those outputs are delivered, so the source can
  commit at its own quiet points;
- ``ready()`` and ``steps()`` (meaningful where ``capabilities.rests``): whether an item can
  come without waiting, and the items with ``None`` where iterating would wait;
- ``parts()``: the sources a composite draws from (empty for a leaf).

Any other iterable with a ``name`` (:class:`ImageSource`) is accepted by the ingest processor
too; it declares nothing, so it is taken as endless, without counters, never committing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from processors.ingest.sources.items import SourceItem

__all__ = [
    "BaseSource",
    "Capabilities",
    "ImageSource",
    "SourceStats",
    "is_endless",
    "source_counters",
    "source_parts",
]


class ImageSource(Protocol):
    """What the ingest processor accepts: a named, finite or endless stream of items."""

    name: str

    def __iter__(self) -> Iterator[SourceItem]: ...


class SourceStats(Protocol):
    """A source's counters: flat ``{key: count}``, cumulative over its iterations."""

    def snapshot(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Capabilities:
    """What every instance of a source class can do (declared once, on the class).

    - ``positions``: its images carry a sky position (``ra``, ``dec``);
    - ``truth``: its images carry :class:`~processors.core.records.GroundTruth`;
    - ``watches_folder``: it can watch a folder for new files
      (:class:`~processors.ingest.sources.watch.FolderWatch`);
    - ``rate_limited_http``: it fetches over rate-limited, retried HTTP
      (:class:`~processors.ingest.surveys.http.SurveyHttp`);
    - ``commits_after_delivery``: it has offsets to commit, through ``commit()`` and
      ``deliver``, only after the caller delivered what was made from them;
    - ``rests``: it may have nothing ready for a while (``ready()``, ``steps()``).
    """

    positions: bool = False
    truth: bool = False
    watches_folder: bool = False
    rate_limited_http: bool = False
    commits_after_delivery: bool = False
    rests: bool = False


class BaseSource(ABC):
    """An image source; subclasses set ``name`` and ``capabilities`` and implement iteration."""

    capabilities: ClassVar[Capabilities] = Capabilities()
    name: str
    stats: SourceStats | None = None
    deliver: Callable[[], None] | None = None

    @property
    def endless(self) -> bool:
        """Whether iteration may never end (a source that does not say is endless)."""
        return True

    @abstractmethod
    def __iter__(self) -> Iterator[SourceItem]: ...

    def ready(self) -> bool:
        """Whether the next item can come without waiting (always, unless the source rests)."""
        return True

    def steps(self) -> Iterator[SourceItem | None]:
        """The items of an iteration, with ``None`` where iterating would wait (never, unless
        the source rests): a caller drawing from several sources uses that time for others."""
        yield from self

    def commit(self) -> None:  # noqa: B027 (a no-op by default, not abstract)
        """Commit what was handed out (a no-op unless ``commits_after_delivery``)."""

    def parts(self) -> Sequence[ImageSource]:
        """The sources a composite draws from, in order; empty for a leaf source."""
        return ()


def source_parts(source: ImageSource) -> list[ImageSource]:
    """The leaf sources of ``source`` (its parts if composite, recursively), in order."""
    parts = source.parts() if isinstance(source, BaseSource) else ()
    if not parts:
        return [source]
    return [leaf for part in parts for leaf in source_parts(part)]


def is_endless(source: ImageSource) -> bool:
    """Whether iterating ``source`` may never end: some leaf is endless, or declares nothing."""
    return any(
        part.endless if isinstance(part, BaseSource) else True for part in source_parts(source)
    )


def source_counters(source: ImageSource) -> dict[str, dict[str, int]]:
    """``{part name: part.stats.snapshot()}`` for every leaf source that keeps counters.

    Parts sharing a name (their images share the ``source`` field too) have their counters summed.
    """
    counters: dict[str, dict[str, int]] = {}
    for part in source_parts(source):
        stats = part.stats if isinstance(part, BaseSource) else None
        if stats is None:
            continue
        merged = counters.setdefault(part.name, {})
        for key, value in stats.snapshot().items():
            merged[key] = merged.get(key, 0) + int(value)
    return counters

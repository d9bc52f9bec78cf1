"""A survey as an image source: targets in, validated cutouts out, every target accounted for.

A :class:`SurveyApi` knows one service's documented interface (which requests make a cutout);
:class:`SurveySource` runs it over a target list with the resilience of
:class:`~processors.ingest.surveys.http.SurveyHttp` and owns what happens to each target:

- fetched and valid: one :class:`RawImage`, in target order except for the retried ones;
- a transient failure after the request's ``attempts``: the target is deferred and tried
  again after the targets behind it (or after its back-off, when none is left), up to
  ``rounds`` times; then it is a dead letter with the last reason (``error_class`` of the
  last failure, ``message`` saying how many tries were made);
- a permanent failure (404, blank or wrong-size cutout, a bad row in the CSV): a dead letter
  at once.

While the breaker is open nothing is sent, and a target that was not tried spends no round
(one whose own requests failed until the breaker opened does): a service that stays down ends
in dead letters after ``rounds`` probes per target, ``breaker_reset_s`` apart, never in a hang.
So ``targets == yielded + failed`` once iteration ends, and the
counters (``stats.snapshot()``) also hold ``requests``, ``retries``, ``deferred``,
``breaker_opened`` and ``errors.<class>`` for every failed attempt. Dead letters are what the
controller's error back-off counts per source.

A re-fetched cutout has the same bytes, hence the same image id (sha256 of source and
pixels): where it is deduplicated is downstream of ingest: every output is keyed by image_id and
ClickHouse keeps one row per id (ReplacingMergeTree on image_id, and on (image_id,
model_version, role) for scores); ingest's own ``images`` count (distinct ids) remembers the
last 200,000 ids (:class:`~processors.core.dedupe.RecentIds`), so it is exact for re-fetches
closer together than that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

from processors.core.exceptions import PermanentFetchError, TransientFetchError
from processors.ingest.counters import SourceCounters
from processors.ingest.files.decode import DecodedFile
from processors.ingest.sources.base import BaseSource, Capabilities
from processors.ingest.sources.items import RawImage, SourceFailure, SourceItem
from processors.ingest.surveys.cone import ConeQuery
from processors.ingest.surveys.http import CircuitOpen, SurveyHttp
from processors.ingest.surveys.targets import BadTarget, Target, read_targets

__all__ = ["Cutout", "SurveyApi", "SurveySource"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cutout:
    image: DecodedFile
    provenance: dict[str, str] = field(default_factory=dict)


class SurveyApi(Protocol):
    """One survey's cutout interface. ``fetch`` raises Transient/PermanentFetchError.

    ``options`` are the survey's own spec options (their parsers); ``default_base_url`` is the
    service root used when the spec gives no ``base_url``.
    """

    options: ClassVar[dict[str, Any]]

    @property
    def survey(self) -> str: ...

    @property
    def default_base_url(self) -> str: ...

    def fetch(self, http: SurveyHttp, target: Target) -> Cutout: ...


class _Stats:
    def __init__(self, counters: SourceCounters, http: SurveyHttp) -> None:
        self._counters = counters
        self._http = http

    def snapshot(self) -> dict[str, int]:
        return {**self._counters.snapshot(), "breaker_opened": self._http.breaker.opened}


@dataclass
class _Pending:
    target: Target
    tries: int = 0
    due: float = 0.0


class SurveySource(BaseSource):
    """Cutouts of every target in ``targets`` (a CSV, see :mod:`processors.ingest.surveys.targets`,
    or a cone); finite: every target ends as an image or a dead letter."""

    capabilities = Capabilities(positions=True, rate_limited_http=True, rests=True)

    def __init__(
        self,
        api: SurveyApi,
        targets: str | Path | ConeQuery,
        http: SurveyHttp,
        *,
        name: str,
        rounds: int = 3,
        stop: threading.Event | None = None,
        catalog: SurveyHttp | None = None,
    ) -> None:
        self.api = api
        self.targets: Path | ConeQuery = (
            targets if isinstance(targets, ConeQuery) else Path(targets)
        )
        if isinstance(self.targets, Path):
            list(read_targets(self.targets))  # fail fast (ConfigError): missing or headless
        self.catalog = catalog
        self.http = http
        self.name = name
        self.rounds = max(1, int(rounds))
        self.stop = stop
        self.counters = http.counters
        for key in ("targets", "yielded", "failed", "requests", "retries", "deferred", "errors"):
            self.counters.add(key, 0)
        self.stats: _Stats = _Stats(self.counters, http)
        self._later: deque[_Pending] = deque()
        self._exhausted = False

    @property
    def endless(self) -> bool:
        """A target list ends."""
        return False

    def __repr__(self) -> str:
        return f"SurveySource({self.api.survey!r}, {str(self.targets)!r}, name={self.name!r})"

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.stop is not None:
            self.stop.wait(seconds)
        else:
            time.sleep(seconds)

    def ready(self) -> bool:
        """Whether the next item can come without waiting: the breaker is not open, and a fresh
        target or a deferred one whose back-off is over is left. (Interleaved draws from other
        sources meanwhile; iterating anyway just waits.)"""
        if self.http.breaker.retry_in() > 0:
            return False
        if self._exhausted and self._later:
            return self._later[0].due <= time.monotonic()
        return True

    def __iter__(self) -> Iterator[SourceItem]:
        for item in self.steps():
            if item is None:
                self._wait(self._idle_for())
            else:
                yield item

    def _idle_for(self) -> float:
        rest = self.http.breaker.retry_in()
        if rest <= 0 and self._exhausted and self._later:
            rest = self._later[0].due - time.monotonic()
        return min(max(rest, 0.0), 1.0)

    def steps(self) -> Iterator[SourceItem | None]:
        """The items of an iteration, with ``None`` where iterating would wait (the breaker is
        open, the only targets left are backing off) or right after a target was deferred: a
        caller drawing from several sources (``Interleaved``) uses the time for the others."""
        fresh = self._fresh()
        later: deque[_Pending] = deque()
        self._later = later
        self._exhausted = False
        try:
            while not self._stopped():
                if self.http.breaker.retry_in() > 0:  # open: spend no round, send nothing
                    yield None
                    continue
                now = time.monotonic()
                if later and (later[0].due <= now or self._exhausted):
                    if later[0].due > now:
                        yield None
                        continue
                    pending = later.popleft()
                elif not self._exhausted:
                    row = next(fresh, None)
                    if row is None:
                        self._exhausted = True
                        continue
                    self.counters.add("targets")
                    if isinstance(row, SourceFailure):
                        yield row  # the cone query itself failed for good: one dead letter
                        continue
                    if isinstance(row, BadTarget):
                        yield self._bad_row(row)
                        continue
                    pending = _Pending(row)
                else:
                    return
                item = self._try(pending)
                if item is None:
                    later.append(pending)
                yield item
        finally:
            self.http.close()

    def _fresh(self) -> Iterator[Target | BadTarget | SourceFailure]:
        if isinstance(self.targets, Path):
            yield from read_targets(self.targets)
            return
        catalog = self.catalog or self.http
        try:
            rows = list(self.targets.targets(catalog))
        except (TransientFetchError, PermanentFetchError) as exc:
            self.counters.add_detail("failed", exc.error_class)
            query = self.targets.sql().encode()
            yield SourceFailure(self.name, self.targets.label, query, exc.error_class, exc.message)
            return
        finally:
            if self.catalog is not None:
                self.catalog.close()
        yield from rows

    def _try(self, pending: _Pending) -> SourceItem | None:
        """The item for this target, or None when it is deferred for another round."""
        target = pending.target
        sent = self.counters.get("requests")
        try:
            cutout = self.api.fetch(self.http, target)
        except CircuitOpen as exc:
            last = self.http.last_error
            if self.counters.get("requests") == sent or last is None:
                return None  # nothing was sent: not a round; the breaker says when to try again
            # the target's own requests failed until the breaker opened: a round spent
            return self._defer(pending, last if isinstance(last, TransientFetchError) else exc)
        except TransientFetchError as exc:
            return self._defer(pending, exc)
        except PermanentFetchError as exc:
            return self._failure(target, exc.error_class, exc.message)
        return self._image(target, cutout)

    def _defer(self, pending: _Pending, exc: TransientFetchError) -> SourceItem | None:
        """Another round later, or a dead letter once ``rounds`` are spent."""
        pending.tries += 1
        if pending.tries >= self.rounds:
            message = self._gave_up(pending, exc)
            return self._failure(pending.target, exc.error_class, message)
        self.counters.add("deferred")
        backoff = self.http.policy.backoff_s * 2**pending.tries
        pending.due = time.monotonic() + min(backoff, self.http.policy.max_backoff_s)
        return None

    def _image(self, target: Target, cutout: Cutout) -> RawImage:
        self.counters.add("yielded")
        image = cutout.image
        provenance = {
            "target": target.key,
            "line": str(target.line),
            **{f"catalog.{k}": v for k, v in target.extra.items() if v},
            **cutout.provenance,
        }
        return RawImage(
            source=self.name,
            survey=self.api.survey,
            format=image.format,
            pixels=image.pixels,
            width=image.width,
            height=image.height,
            bands=image.bands,
            observed_at=image.observed_at or datetime.now(UTC),
            ra=target.ra,
            dec=target.dec,
            provenance=provenance,
        )

    def _gave_up(self, pending: _Pending, exc: TransientFetchError) -> str:
        attempts = self.http.policy.attempts
        return (
            f"gave up after {pending.tries} rounds of up to {attempts} attempts; "
            f"last: {exc.message}"
        )

    def _key(self, target: Target | BadTarget) -> str:
        name = target.key if isinstance(target, Target) else "bad row"
        label = self.targets.name if isinstance(self.targets, Path) else self.targets.label
        return f"{label}:{target.line}:{name}"

    def _bad_row(self, row: BadTarget) -> SourceFailure:
        self.counters.add_detail("failed", "BadTarget")
        return SourceFailure(self.name, self._key(row), row.raw.encode(), "BadTarget", row.reason)

    def _failure(self, target: Target, error_class: str, message: str) -> SourceFailure:
        self.counters.add_detail("failed", error_class)
        log.warning("%s: target %s: %s: %s", self.name, target.key, error_class, message)
        raw = f"{target.ra},{target.dec},{target.name}".encode()
        return SourceFailure(self.name, self._key(target), raw, error_class, message)

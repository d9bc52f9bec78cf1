"""A bound on the distinct values of Prometheus labels that come from data.

Labels such as ``source``, ``model``, ``model_version``, ``error_class``, ``issued_by`` and an
event's ``type`` take their values from records and events, which any producer can write: left
alone, a stream with a million source names makes a million time series in every scraper.

Invariants (one :class:`LabelBound` per process, :data:`LABEL_BOUND`):

- per label name, across all metrics of the process, the first ``limit`` distinct values keep
  their own name; every later value is reported as :data:`OTHER` (``metrics.label_values_max``,
  set by ``skyloop worker``), so a label never has more than ``limit + 1`` values per process;
- a value once kept stays kept (a series never changes name while the process lives);
- ``skyloop_metric_label_values_folded_total{label}`` counts the distinct values folded into
  :data:`OTHER` (remembered by a 64-bit hash, up to :data:`REMEMBERED` of them per label; past
  that, every folded observation of a value not remembered counts again, an over-count);
- on a gauge, the :data:`OTHER` series holds the last value any folded label value set, and
  ``remove`` of a folded value removes nothing (other folded values may still be set there).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter

__all__ = [
    "BOUNDED_LABELS",
    "DEFAULT_LABEL_VALUES_MAX",
    "LABEL_BOUND",
    "OTHER",
    "REMEMBERED",
    "Bounded",
    "LabelBound",
    "folded_counter",
]

OTHER = "other"
DEFAULT_LABEL_VALUES_MAX = 100
REMEMBERED = 100_000
BOUNDED_LABELS = frozenset(
    {"source", "model", "model_version", "error_class", "issued_by", "type", "backbone"}
)
"""Label names whose values come from data (records, events, configuration of sources)."""

M = TypeVar("M")


class LabelBound:
    """The kept values of each bounded label name, and the folded count; thread-safe."""

    def __init__(self, limit: int = DEFAULT_LABEL_VALUES_MAX) -> None:
        self.limit = limit
        self._kept: dict[str, set[str]] = {}
        self._folded: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        self.folded: Counter | None = None

    def set_limit(self, limit: int) -> None:
        """Values already kept stay kept; the limit applies to values not seen yet."""
        if limit < 1:
            raise ValueError(f"label_values_max must be at least 1, not {limit}")
        self.limit = limit

    def value(self, label: str, value: str) -> str:
        """``value`` itself while the label has room or already keeps it, else :data:`OTHER`."""
        with self._lock:
            kept = self._kept.setdefault(label, set())
            if value in kept:
                return value
            if len(kept) < self.limit:
                kept.add(value)
                return value
            folded = self._folded.setdefault(label, set())
            digest = int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest())
            new = digest not in folded
            if new and len(folded) < REMEMBERED:
                folded.add(digest)
        if new and self.folded is not None:
            self.folded.labels(label).inc()
        return OTHER

    def kept(self, label: str, value: str) -> bool:
        with self._lock:
            return value in self._kept.get(label, ())

    def reset(self) -> None:
        """Forget every kept and folded value (tests)."""
        with self._lock:
            self._kept.clear()
            self._folded.clear()


LABEL_BOUND = LabelBound()


def folded_counter(registry: CollectorRegistry) -> Counter:
    """Register the folded-values counter in ``registry`` and let :data:`LABEL_BOUND` use it."""
    counter = Counter(
        "skyloop_metric_label_values_folded",
        "Distinct label values reported as 'other' because the label had "
        "metrics.label_values_max values already",
        ["label"],
        registry=registry,
    )
    LABEL_BOUND.folded = counter
    return counter


class Bounded(Generic[M]):
    """A metric whose bounded labels (:data:`BOUNDED_LABELS`) go through :data:`LABEL_BOUND`.

    ``labels`` and ``remove`` map the values; everything else is the metric's own."""

    def __init__(self, metric: M, bound: LabelBound = LABEL_BOUND) -> None:
        self.metric = metric
        self._bound = bound
        self._names: tuple[str, ...] = tuple(getattr(metric, "_labelnames", ()))

    def _ordered(self, values: tuple[Any, ...], named: dict[str, Any]) -> tuple[str, ...]:
        if named:
            return tuple(str(named[name]) for name in self._names)
        return tuple(str(v) for v in values)

    def labels(self, *values: Any, **named: Any) -> Any:
        ordered = self._ordered(values, named)
        mapped = [
            self._bound.value(name, value) if name in BOUNDED_LABELS else value
            for name, value in zip(self._names, ordered, strict=True)
        ]
        return self.metric.labels(*mapped)  # type: ignore[attr-defined]

    def remove(self, *values: Any) -> None:
        """Remove a series of kept values; a folded value's series (:data:`OTHER`) stays."""
        ordered = self._ordered(values, {})
        for name, value in zip(self._names, ordered, strict=True):
            if name in BOUNDED_LABELS and not self._bound.kept(name, value):
                return
        self.metric.remove(*ordered)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.metric, name)

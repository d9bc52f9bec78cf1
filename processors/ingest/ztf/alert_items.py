"""From packet bytes to source items: quality cuts, counters, and failures kept whole.

Shared by the file and topic sources. Per packet, in container order, each alert becomes
exactly one of: a :class:`RawImage` (yielded), a cut (counted, nothing yielded), or a
:class:`SourceFailure` (its cutouts could not be made into an image). A packet that cannot be
read at all becomes one SourceFailure carrying the packet's bytes. Nothing is dropped silently:

    stats.read == stats.yielded + stats.cut + (stats.failed - stats.packets_failed)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from processors.core.exceptions import ConfigError
from processors.ingest.sources.items import SourceFailure, SourceItem
from processors.ingest.ztf.cutouts import CUTOUT_MODES, CutoutError, CutoutMode, alert_to_image
from processors.ingest.ztf.packets import AlertPacketError, AlertReader, ZtfAlert

__all__ = ["AlertItems", "QualityCuts", "ZtfStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QualityCuts:
    """Broker-style cuts on the candidate; ``None`` disables a cut (the default: no cuts).

    - ``min_rb``: keep ``rb >= min_rb`` (real-bogus score, 0..1; brokers use ~0.5-0.65).
    - ``min_drb``: keep ``drb >= min_drb`` (deep real-bogus, schema >= 3.3; ~0.8-0.99).
    - ``max_nbad``: keep ``nbad <= max_nbad`` (bad pixels within 5x5; 0 = clean only).

    An alert whose packet lacks the field a cut needs fails that cut (reason ``<cut>:missing``),
    like a NULL comparison in a broker filter: e.g. ``min_drb`` cuts every pre-3.3 alert, and
    the counters say so.

    >>> QualityCuts(min_rb=0.5).reason_to_cut(rb=0.3, drb=None, nbad=0)
    'min_rb'
    """

    min_rb: float | None = None
    min_drb: float | None = None
    max_nbad: int | None = None

    def __post_init__(self) -> None:
        for key in ("min_rb", "min_drb"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{key}={value!r}: accepted values are numbers in [0, 1]")
        nbad = self.max_nbad
        if nbad is not None and (isinstance(nbad, bool) or not isinstance(nbad, int) or nbad < 0):
            raise ConfigError(f"max_nbad={self.max_nbad!r}: accepted values are integers >= 0")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.min_rb, self.min_drb, self.max_nbad))

    def reason_to_cut(self, *, rb: float | None, drb: float | None, nbad: int | None) -> str | None:
        """The first failing cut in the order rb, drb, nbad, or ``None`` to keep the alert."""
        if self.min_rb is not None and (rb is None or rb < self.min_rb):
            return "min_rb" if rb is not None else "min_rb:missing"
        if self.min_drb is not None and (drb is None or drb < self.min_drb):
            return "min_drb" if drb is not None else "min_drb:missing"
        if self.max_nbad is not None and (nbad is None or nbad > self.max_nbad):
            return "max_nbad" if nbad is not None else "max_nbad:missing"
        return None

    def cut(self, alert: ZtfAlert) -> str | None:
        return self.reason_to_cut(rb=alert.rb, drb=alert.drb, nbad=alert.nbad)


@dataclass
class ZtfStats:
    """Counters of one source object, cumulative over all its iterations.

    ``packets``: packet files or messages taken; ``packets_failed``: those not readable at all;
    ``read``: alerts decoded; ``yielded``: RawImages handed out; ``cut_by_reason``: alerts cut
    by a quality cut, per reason; ``failed_by_class``: SourceFailures handed out, per
    ``error_class`` (packet- and alert-level). Updated by the iterating thread just before it
    hands out an item; read them with :meth:`snapshot` from elsewhere.
    """

    packets: int = 0
    packets_failed: int = 0
    read: int = 0
    yielded: int = 0
    cut_by_reason: dict[str, int] = field(default_factory=dict)
    failed_by_class: dict[str, int] = field(default_factory=dict)

    @property
    def cut(self) -> int:
        return sum(self.cut_by_reason.values())

    @property
    def failed(self) -> int:
        return sum(self.failed_by_class.values())

    def snapshot(self) -> dict[str, int]:
        """Flat counters for metrics: ``cut.<reason>`` and ``failed.<error_class>`` included."""
        flat = {
            "packets": self.packets,
            "packets_failed": self.packets_failed,
            "read": self.read,
            "yielded": self.yielded,
            "cut": self.cut,
            "failed": self.failed,
        }
        flat.update({f"cut.{k}": v for k, v in sorted(self.cut_by_reason.items())})
        flat.update({f"failed.{k}": v for k, v in sorted(self.failed_by_class.items())})
        return flat


class AlertItems:
    """Converts packets to items for one source: reads, cuts, decodes cutouts, counts."""

    def __init__(
        self, source: str, cutout: CutoutMode, quality: QualityCuts, stats: ZtfStats
    ) -> None:
        if cutout not in CUTOUT_MODES:
            raise ConfigError(f"cutout={cutout!r}: accepted values are {', '.join(CUTOUT_MODES)}")
        self.source = source
        self.cutout: CutoutMode = cutout
        self.quality = quality
        self.stats = stats
        self._reader = AlertReader()

    def from_packet(
        self, key: str, data: bytes, origin: Mapping[str, str] | None = None
    ) -> Iterator[SourceItem]:
        """Items of one packet in container order; ``origin`` is added to each provenance."""
        self.stats.packets += 1
        alerts = self._reader.read(data)
        while True:
            try:
                alert = next(alerts)
            except StopIteration:
                return
            except AlertPacketError as exc:
                self.stats.packets_failed += 1
                yield self._failure(key, data, exc.reason, str(exc))
                return
            self.stats.read += 1
            if isinstance(alert, AlertPacketError):
                yield self._failure(key, data, alert.reason, str(alert))
                continue
            reason = self.quality.cut(alert)
            if reason is not None:
                self.stats.cut_by_reason[reason] = self.stats.cut_by_reason.get(reason, 0) + 1
                log.debug("%s: candid %s cut by %s", key, alert.candid, reason)
                continue
            try:
                image = alert_to_image(alert, self.cutout, self.source)
            except CutoutError as exc:
                yield self._failure(f"{key}#{alert.candid}", data, exc.reason, str(exc))
                continue
            if origin:
                image.provenance.update(origin)
            self.stats.yielded += 1
            yield image

    def packet_failure(self, key: str, raw: bytes, error_class: str, message: str) -> SourceFailure:
        """Count and build the failure of a packet that never reached the reader."""
        self.stats.packets += 1
        self.stats.packets_failed += 1
        return self._failure(key, raw, error_class, message)

    def _failure(self, key: str, data: bytes, error_class: str, message: str) -> SourceFailure:
        self.stats.failed_by_class[error_class] = self.stats.failed_by_class.get(error_class, 0) + 1
        log.warning("%s: %s: %s", key, error_class, message)
        return SourceFailure(
            source=self.source, key=key, raw=data, error_class=error_class, message=message
        )

    def log_summary(self) -> None:
        log.info("ztf source %r: %s", self.source, self.stats.snapshot())

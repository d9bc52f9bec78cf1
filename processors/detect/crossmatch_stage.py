"""The detect processor's cross-match step: offline catalogs, a ZTF alert's context, TAP.

Built once from :class:`CrossmatchSettings` (catalogs are loaded then, not per image). For a
batch of images it returns, per image and in input order, the merged cross-matches of

1. the offline :class:`CatalogMatcher` (bundled and user catalogs) at the image's ra/dec;
2. the alert's own context (:func:`ztf_crossmatches`) when the image is from ZTF;
3. the TAP service, when one is configured and its circuit is closed.

Each image's list is sorted by separation, then catalog, then object id. An image without a
position gets only its ZTF context (none elsewhere). A TAP failure never fails the batch: the
image keeps its offline matches, the failure is counted (``tap_failures``) and logged once per
outage; the circuit breaker stops further queries until it lets a trial through.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from processors.core.config import CrossmatchSettings
from processors.core.exceptions import TapError, TapUnavailableError
from processors.core.records import CrossMatch, ImageRecord
from processors.detect.catalogs import Catalog, TableColumns, bundled_catalog, table_catalog
from processors.detect.crossmatch import CatalogMatcher, MatchRadius, Position
from processors.detect.tap import TAP_SERVICES, CircuitBreaker, TapCatalog
from processors.detect.ztf_context import ZTF_RADII, ztf_crossmatches

__all__ = ["CrossMatchStage"]

log = logging.getLogger(__name__)


def _sort_key(m: CrossMatch) -> tuple[float, str, str]:
    return (m["separation_arcsec"], m["catalog"], m["object_id"])


class CrossMatchStage:
    """Cross-matches batches of images; see the module docstring for what it merges."""

    def __init__(
        self,
        matcher: CatalogMatcher | None,
        *,
        ztf_context: bool = True,
        ztf_radii: Mapping[str, MatchRadius] | None = None,
        tap: TapCatalog | None = None,
        tap_radius_arcsec: float = 2.0,
    ) -> None:
        self.matcher = matcher
        self.ztf_context = ztf_context
        self.ztf_radii = dict(ztf_radii or ZTF_RADII)
        self.tap = tap
        self.tap_radius_arcsec = tap_radius_arcsec
        self.tap_failures = 0
        self._tap_down = False

    @classmethod
    def from_settings(cls, settings: CrossmatchSettings) -> CrossMatchStage:
        """Load the configured catalogs (``settings.crossmatch``; raises CatalogError naming the
        file and column)."""
        by_catalog = settings.radius_by_catalog
        bright = set(settings.bright_star_catalogs)

        def radius(name: str) -> MatchRadius:
            point = by_catalog.get(name, settings.radius_arcsec)
            return MatchRadius(
                radius_arcsec=point,
                bright_stars=name in bright,
                bright_magnitude=settings.bright_star_magnitude,
                max_arcsec=max(point, settings.bright_star_max_arcsec),
            )

        catalogs: list[Catalog] = [bundled_catalog(n) for n in settings.catalogs]
        columns = TableColumns(**settings.user_columns)
        for name, path in sorted(settings.user_catalogs.items()):
            catalogs.append(table_catalog(name, Path(path), columns))
        matcher = (
            CatalogMatcher(
                [(c, radius(c.name)) for c in catalogs],
                max_per_catalog=settings.max_per_catalog,
            )
            if catalogs
            else None
        )
        tap = None
        if settings.tap_service is not None:
            query = TAP_SERVICES[settings.tap_service]
            tap = TapCatalog(
                query,
                url=settings.tap_url,
                timeout_s=settings.tap_timeout_s,
                attempts=settings.tap_attempts,
                max_rows=settings.max_per_catalog,
                breaker=CircuitBreaker(
                    failures_to_open=settings.tap_failures_to_open,
                    open_s=settings.tap_open_s,
                ),
            )
        tap_radius = by_catalog.get(tap.name, settings.tap_radius_arcsec) if tap else 0.0
        ztf_radii = {
            name: MatchRadius(
                radius_arcsec=by_catalog.get(name, default.radius_arcsec),
                bright_stars=default.bright_stars,
                bright_magnitude=settings.bright_star_magnitude,
                max_arcsec=max(
                    by_catalog.get(name, default.radius_arcsec),
                    settings.bright_star_max_arcsec,
                ),
            )
            for name, default in ZTF_RADII.items()
        }
        return cls(
            matcher,
            ztf_context=settings.ztf_context,
            ztf_radii=ztf_radii,
            tap=tap,
            tap_radius_arcsec=tap_radius,
        )

    def crossmatches(self, images: Sequence[ImageRecord]) -> list[list[CrossMatch]]:
        """One sorted list per image, in input order (see the module docstring)."""
        positions: list[Position] = [(im["ra"], im["dec"]) for im in images]
        merged: list[list[CrossMatch]] = (
            self.matcher.match(positions) if self.matcher else [[] for _ in images]
        )
        if self.ztf_context:
            for matches, image in zip(merged, images, strict=True):
                if image["survey"] == "ztf":
                    matches.extend(ztf_crossmatches(image["provenance"], self.ztf_radii))
        if self.tap is not None:
            for matches, position in zip(merged, positions, strict=True):
                matches.extend(self._tap_cone(position))
        for matches in merged:
            matches.sort(key=_sort_key)
        return merged

    def _tap_cone(self, position: Position) -> list[CrossMatch]:
        assert self.tap is not None
        try:
            found = self.tap.match([position], self.tap_radius_arcsec)[0]
        except TapUnavailableError as exc:
            self.tap_failures += 1
            if not self._tap_down:
                log.warning("cross-match without TAP until it answers again: %s", exc)
            self._tap_down = True
            return []
        except TapError as exc:
            self.tap_failures += 1
            log.warning("TAP query failed: %s", exc)
            return []
        if self._tap_down:
            log.info("TAP %s answers again", self.tap.name)
        self._tap_down = False
        return found

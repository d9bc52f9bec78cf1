"""Galaxy Zoo targets: a Galaxy Zoo catalog's galaxies, images from a cutout service
(``galaxyzoo:CATALOG.csv``).

Galaxy Zoo publishes its classifications as catalogs (https://data.galaxyzoo.org: Galaxy Zoo 2
``gz2_hart16`` with ``ra, dec, dr7objid`` and vote fractions; Galaxy Zoo DECaLS ``gz_decals``
with ``ra, dec, iauname``). Its volunteers classified SDSS (GZ1, GZ2) and Legacy Survey
(GZ DECaLS, DESI) colour cutouts; this source fetches the same kind of image through
``cutout=sdss`` (SkyServer ImgCutout, processors/ingest/surveys/sdss; the default) or
``cutout=decals`` (Legacy Survey, processors/ingest/surveys/decals, JPEG). The catalog's other
columns (vote fractions, morphology labels) travel in ``provenance['catalog.<column>']``, so
they can be queried in ClickHouse next to the scores.

Options: ``cutout`` (sdss or decals), ``size`` (pixels, default 64), ``scale`` (arcsec/pixel,
for sdss; ``pixscale`` for decals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from processors.ingest.sources.options import choice, integer, positive
from processors.ingest.surveys.decals import DecalsCutouts
from processors.ingest.surveys.http import SurveyHttp
from processors.ingest.surveys.sdss import SdssCutouts
from processors.ingest.surveys.source import Cutout
from processors.ingest.surveys.targets import Target

__all__ = ["OPTIONS", "GalaxyZooCutouts"]


OPTIONS: dict[str, Any] = {
    "cutout": choice("sdss", "decals"),
    "size": integer(8, 2048),
    "scale": positive,
    "pixscale": positive,
}


@dataclass(frozen=True)
class GalaxyZooCutouts:
    cutout: str = "sdss"
    size: int = 64
    scale: float = 0.396
    pixscale: float = 0.262
    survey: str = "galaxyzoo"
    options: ClassVar[dict[str, Any]] = OPTIONS
    _api: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        api: Any = (
            SdssCutouts(scale=self.scale, size=self.size)
            if self.cutout == "sdss"
            else DecalsCutouts(format="jpeg", pixscale=self.pixscale, size=self.size)
        )
        object.__setattr__(self, "_api", api)

    @property
    def default_base_url(self) -> str:
        """The root of the cutout service chosen (``cutout``) when the spec gives none."""
        return str(self._api.default_base_url)

    def fetch(self, http: SurveyHttp, target: Target) -> Cutout:
        cutout: Cutout = self._api.fetch(http, target)
        return Cutout(cutout.image, {**cutout.provenance, "cutout": self.cutout})

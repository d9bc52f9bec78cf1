"""DECaLS / DESI Legacy Imaging Surveys cutouts (``decals:TARGETS.csv``).

Interface (Legacy Survey viewer cutout service; https://www.legacysurvey.org/viewer and
https://www.legacysurvey.org/dr10/description/, "Image cutouts"): ``GET
{base_url}/cutout.fits?ra=DEG&dec=DEG&layer=LAYER&pixscale=ARCSEC&size=PX&bands=grz`` answers
a FITS cube (one plane per band, e.g. 3 x size x size for ``grz``); ``cutout.jpg`` with the
same parameters answers a colour JPEG. Outside the footprint the cube is all zeros (a dead
letter ``BlankImage``).

Options: ``format`` (``fits`` or ``jpeg``, default fits), ``layer`` (default ``ls-dr10``),
``pixscale`` (arcsec/pixel, default 0.262, the native DECam scale), ``size`` (pixels, default
64), ``bands`` (FITS only, default ``grz``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from processors.ingest.sources.options import integer, positive, text
from processors.ingest.surveys.http import SurveyHttp
from processors.ingest.surveys.payloads import Expected, check_payload, cutout_format
from processors.ingest.surveys.source import Cutout
from processors.ingest.surveys.targets import Target

__all__ = ["DEFAULT_BASE_URL", "OPTIONS", "DecalsCutouts"]

DEFAULT_BASE_URL = "https://www.legacysurvey.org/viewer"


OPTIONS: dict[str, Any] = {
    "format": cutout_format,
    "layer": text,
    "pixscale": positive,
    "size": integer(8, 3000),
    "bands": text,
}


@dataclass(frozen=True)
class DecalsCutouts:
    format: str = "fits"
    layer: str = "ls-dr10"
    pixscale: float = 0.262
    size: int = 64
    bands: str = "grz"
    survey: str = "decals"
    options: ClassVar[dict[str, Any]] = OPTIONS

    @property
    def default_base_url(self) -> str:
        """The service root when the spec gives no ``base_url``."""
        return DEFAULT_BASE_URL

    def fetch(self, http: SurveyHttp, target: Target) -> Cutout:
        params: dict[str, Any] = {
            "ra": f"{target.ra:.7f}",
            "dec": f"{target.dec:.7f}",
            "layer": self.layer,
            "pixscale": self.pixscale,
            "size": self.size,
        }
        if self.format == "fits":
            params["bands"] = self.bands
            path, expected = "cutout.fits", Expected("fits", self.size, self.size, len(self.bands))
        else:
            path, expected = "cutout.jpg", Expected("jpeg", self.size, self.size, 3)
        image = http.get(path, params, lambda body, ct: check_payload(body, ct, expected))
        provenance = {"layer": self.layer, "pixscale": str(self.pixscale), "service": path}
        if self.format == "fits":
            provenance["bands"] = self.bands
        return Cutout(image, provenance)

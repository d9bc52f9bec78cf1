"""SDSS cutouts from the SkyServer ImgCutout service (``sdss:TARGETS.csv``).

Interface (SkyServer web services, "ImgCutout"; https://skyserver.sdss.org/dr18/SkyServerWS/
ImgCutout/getjpeg and the SkyServer "Visual Tools / Image List" help): ``GET
{base_url}/getjpeg?ra=DEG&dec=DEG&scale=ARCSEC_PER_PIXEL&width=PX&height=PX`` answers a colour
(gri composite) JPEG centred on the position. The service only renders JPEG; outside the
footprint it returns a blank (black) image, which the payload check makes a dead letter.

Options: ``scale`` (arcsec/pixel, default 0.396, SDSS's native scale), ``size`` (pixels, width
= height, default 64), ``release`` (``dr18``; used in the default base URL only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from processors.ingest.sources.options import OptionParser, integer, positive, text
from processors.ingest.surveys.http import SurveyHttp
from processors.ingest.surveys.payloads import Expected, check_payload
from processors.ingest.surveys.source import Cutout
from processors.ingest.surveys.targets import Target

__all__ = ["OPTIONS", "SdssCutouts", "default_base_url"]

OPTIONS: dict[str, OptionParser] = {"scale": positive, "size": integer(8, 2048), "release": text}


def default_base_url(release: str = "dr18") -> str:
    return f"https://skyserver.sdss.org/{release}/SkyServerWS/ImgCutout"


@dataclass(frozen=True)
class SdssCutouts:
    scale: float = 0.396
    size: int = 64
    release: str = "dr18"
    survey: str = "sdss"
    options: ClassVar[dict[str, OptionParser]] = OPTIONS

    @property
    def default_base_url(self) -> str:
        """The service root when the spec gives no ``base_url`` (it names the release)."""
        return default_base_url(self.release)

    def fetch(self, http: SurveyHttp, target: Target) -> Cutout:
        params = {
            "ra": f"{target.ra:.7f}",
            "dec": f"{target.dec:.7f}",
            "scale": self.scale,
            "width": self.size,
            "height": self.size,
        }
        expected = Expected("jpeg", self.size, self.size, 3)
        image = http.get("getjpeg", params, lambda body, ct: check_payload(body, ct, expected))
        return Cutout(image, {"scale": str(self.scale), "service": "ImgCutout/getjpeg"})

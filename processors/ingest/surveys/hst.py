"""HST cutouts from the Hubble Legacy Archive's fitscut service (``hst:TARGETS.csv``).

Interface (HLA, "Cutouts: fitscut.cgi interface", https://hla.stsci.edu/fitscutcgi_interface.html):
``GET {base_url}/fitscut.cgi?red=DATASET&ra=DEG&dec=DEG&size=PX&format=fits`` answers a FITS
cutout of the HLA image DATASET (e.g. ``hst_10188_10_acs_wfc_f814w``) centred on the position;
``format=jpeg`` a JPEG. The dataset comes from the targets CSV's ``dataset`` column, else from
the spec's ``dataset=`` option (one field, many positions: a deep field); a target with neither
is a dead letter ``NoDataset``. A position outside the dataset's footprint answers blank pixels
(a dead letter ``BlankImage``).

Options: ``dataset``, ``size`` (pixels, default 64), ``format`` (fits or jpeg, default fits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from processors.core.exceptions import PermanentFetchError
from processors.ingest.sources.options import integer, text
from processors.ingest.surveys.http import SurveyHttp
from processors.ingest.surveys.payloads import Expected, check_payload, cutout_format
from processors.ingest.surveys.source import Cutout
from processors.ingest.surveys.targets import Target

__all__ = ["DEFAULT_BASE_URL", "OPTIONS", "HstCutouts"]

DEFAULT_BASE_URL = "https://hla.stsci.edu/cgi-bin"


OPTIONS: dict[str, Any] = {"dataset": text, "size": integer(8, 4096), "format": cutout_format}


@dataclass(frozen=True)
class HstCutouts:
    dataset: str | None = None
    size: int = 64
    format: str = "fits"
    survey: str = "hst"
    options: ClassVar[dict[str, Any]] = OPTIONS

    @property
    def default_base_url(self) -> str:
        """The service root when the spec gives no ``base_url``."""
        return DEFAULT_BASE_URL

    def fetch(self, http: SurveyHttp, target: Target) -> Cutout:
        dataset = target.extra.get("dataset") or self.dataset
        if not dataset:
            raise PermanentFetchError(
                "NoDataset", "no HLA dataset: add a dataset column or the dataset= option"
            )
        params = {
            "red": dataset,
            "ra": f"{target.ra:.7f}",
            "dec": f"{target.dec:.7f}",
            "size": self.size,
            "format": self.format,
        }
        bands = 1 if self.format == "fits" else None  # a monochrome JPEG may come as L or RGB
        expected = Expected(self.format, self.size, self.size, bands)  # type: ignore[arg-type]
        image = http.get("fitscut.cgi", params, lambda body, ct: check_payload(body, ct, expected))
        return Cutout(image, {"dataset": dataset, "service": "HLA fitscut.cgi"})

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
from typing import Any

from processors.core.exceptions import ConfigError, PermanentFetchError
from processors.ingest.payloads import Expected, check_payload
from processors.ingest.spec_options import integer, text
from processors.ingest.survey_http import SurveyHttp
from processors.ingest.survey_source import Cutout
from processors.ingest.targets import Target

__all__ = ["DEFAULT_BASE_URL", "OPTIONS", "HstCutouts"]

DEFAULT_BASE_URL = "https://hla.stsci.edu/cgi-bin"


def _format(key: str, raw: str) -> str:
    value = {"jpg": "jpeg"}.get(raw.lower(), raw.lower())
    if value not in ("fits", "jpeg"):
        raise ConfigError(f"{key}={raw!r}: accepted values are fits, jpeg")
    return value


OPTIONS: dict[str, Any] = {"dataset": text, "size": integer(8, 4096), "format": _format}


@dataclass(frozen=True)
class HstCutouts:
    dataset: str | None = None
    size: int = 64
    format: str = "fits"
    survey: str = "hst"

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

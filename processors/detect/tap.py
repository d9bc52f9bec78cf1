"""Online cross-match by ADQL cone queries to a TAP service (SIMBAD or the Gaia archive).

A query runs through pyvo's synchronous TAP protocol (``POST <url>/sync``, VOTable back) on a
``requests`` session whose every request has a connect and read timeout. A failed query is
retried with exponential backoff (tenacity) when the failure may pass: a timeout, a refused
connection, an HTTP 429 or 5xx, a response that is not a VOTable. A query the service rejects
(HTTP 4xx, or a VOTable with ``QUERY_STATUS=ERROR``) is not retried: it raises
:class:`TapError` at once. When ``failures_to_open`` queries in a row fail all their attempts,
the :class:`CircuitBreaker` opens: for ``open_s`` seconds every query raises
:class:`TapUnavailableError` without touching the network, then one trial query decides
whether it closes again. An online catalog being down therefore costs a detector at most
``failures_to_open * attempts`` timeouts, not one per candidate.

Invariants: separations are computed here (astropy) from the returned positions, not trusted
from the service; results are sorted by separation and hold only objects within the radius;
nothing is cached (a service's answers may change).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import astropy.units as u
import numpy as np
import requests
from astropy.coordinates import SkyCoord
from pyvo.dal import DALFormatError, DALQueryError, DALServiceError, TAPService
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from processors.core.exceptions import CatalogError, TapError, TapUnavailableError
from processors.core.records import CrossMatch

__all__ = [
    "GAIA_DR3",
    "SIMBAD",
    "TAP_SERVICES",
    "CircuitBreaker",
    "ConeQuery",
    "TapCatalog",
]


@dataclass(frozen=True)
class ConeQuery:
    """An ADQL cone search returning ``object_id, ra, dec`` and optionally ``magnitude``, ``kind``.

    ``adql`` is formatted with ``ra``, ``dec``, ``radius_deg`` (degrees) and ``limit``.
    ``kind`` is used where the query returns no ``kind`` column.
    """

    catalog: str
    url: str
    adql: str
    kind: str | None = None

    def text(self, ra: float, dec: float, radius_arcsec: float, limit: int) -> str:
        return self.adql.format(ra=ra, dec=dec, radius_deg=radius_arcsec / 3600.0, limit=limit)


SIMBAD = ConeQuery(
    catalog="simbad",
    url="https://simbad.cds.unistra.fr/simbad/sim-tap",
    adql=(
        "SELECT TOP {limit} basic.main_id AS object_id, basic.ra AS ra, basic.dec AS dec, "
        "basic.otype AS kind, allfluxes.V AS magnitude "
        "FROM basic LEFT OUTER JOIN allfluxes ON basic.oid = allfluxes.oidref "
        "WHERE CONTAINS(POINT('ICRS', basic.ra, basic.dec), "
        "CIRCLE('ICRS', {ra!r}, {dec!r}, {radius_deg!r})) = 1"
    ),
)
GAIA_DR3 = ConeQuery(
    catalog="gaia_dr3",
    url="https://gea.esac.esa.int/tap-server/tap",
    adql=(
        "SELECT TOP {limit} source_id AS object_id, ra, dec, phot_g_mean_mag AS magnitude "
        "FROM gaiadr3.gaia_source "
        "WHERE CONTAINS(POINT('ICRS', ra, dec), "
        "CIRCLE('ICRS', {ra!r}, {dec!r}, {radius_deg!r})) = 1"
    ),
    # Gaia sources bright enough to matter here are stars; fainter ones may be galaxies.
    kind="star",
)
TAP_SERVICES = {"simbad": SIMBAD, "gaia": GAIA_DR3}
"""Known services by name (``crossmatch_tap_service``)."""


class CircuitBreaker:
    """Gives up on a service after ``failures_to_open`` consecutive failures, for ``open_s``.

    States: closed (calls go through), open (calls refused until ``open_s`` has passed since
    the last failure), half-open (one trial call; success closes, failure opens again).

    >>> now = [0.0]
    >>> breaker = CircuitBreaker(failures_to_open=2, open_s=10.0, clock=lambda: now[0])
    >>> breaker.failed(); breaker.allows()
    True
    >>> breaker.failed(); breaker.allows()
    False
    >>> now[0] = 10.0; breaker.allows()
    True
    >>> breaker.succeeded(); breaker.state
    'closed'
    """

    def __init__(
        self,
        *,
        failures_to_open: int = 3,
        open_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures_to_open < 1:
            raise CatalogError(f"failures_to_open must be >= 1, not {failures_to_open}")
        if not open_s > 0:
            raise CatalogError(f"open_s must be > 0 s, not {open_s}")
        self.failures_to_open = failures_to_open
        self.open_s = open_s
        self._clock = clock
        self.consecutive_failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "open" if self._clock() - self._opened_at < self.open_s else "half-open"

    def allows(self) -> bool:
        return self.state != "open"

    def failed(self) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failures_to_open:
            self._opened_at = self._clock()

    def succeeded(self) -> None:
        self.consecutive_failures = 0
        self._opened_at = None


class _TimeoutSession(requests.Session):
    """A session whose requests time out unless the caller sets its own timeout."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout_s)
        return super().request(*args, **kwargs)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, DALQueryError):
        return False
    if isinstance(exc, DALServiceError):
        code = exc.code or 0
        return code == 0 or code == 429 or code >= 500
    return isinstance(exc, DALFormatError | requests.RequestException)


class TapCatalog:
    """Cone searches on one TAP service, with timeouts, retries and a circuit breaker.

    ``timeout_s``: connect and read timeout of each HTTP request. ``attempts``: tries per
    query (1 = no retry). ``backoff_s``: first wait between tries, doubling up to 8 times that.
    """

    def __init__(
        self,
        query: ConeQuery,
        *,
        url: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff_s: float = 0.5,
        max_rows: int = 20,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise CatalogError(f"timeout_s must be > 0 s, not {timeout_s}")
        if attempts < 1:
            raise CatalogError(f"attempts must be >= 1, not {attempts}")
        self.query = query
        self.url = (url or query.url).rstrip("/")
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_rows = max_rows
        self.breaker = breaker or CircuitBreaker()
        self._service = TAPService(self.url, session=_TimeoutSession(timeout_s))

    @property
    def name(self) -> str:
        return self.query.catalog

    def cone(self, ra: float, dec: float, radius_arcsec: float) -> list[CrossMatch]:
        """Objects within ``radius_arcsec`` of (ra, dec), nearest first.

        Raises :class:`TapUnavailableError` when the circuit is open or every attempt failed,
        :class:`TapError` when the service rejects the query.
        """
        if not (math.isfinite(ra) and math.isfinite(dec) and abs(dec) <= 90 and 0 <= ra <= 360):
            raise CatalogError(f"cone at ra={ra!r}, dec={dec!r}: not a sky position")
        if not self.breaker.allows():
            raise TapUnavailableError(
                f"TAP {self.name} at {self.url}: circuit open after "
                f"{self.breaker.consecutive_failures} failed queries; retried after "
                f"{self.breaker.open_s:g} s"
            )
        adql = self.query.text(ra, dec, radius_arcsec, self.max_rows)
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=8 * self.backoff_s),
            retry=retry_if_exception(_transient),
            reraise=True,
        )
        try:
            table = retrying(lambda: self._service.run_sync(adql).to_table())
        except DALQueryError as exc:
            # The service answered: it is up, the query is what failed.
            self.breaker.succeeded()
            raise TapError(f"TAP {self.name} at {self.url} rejected the query: {exc}") from exc
        except (DALServiceError, DALFormatError, requests.RequestException) as exc:
            code = getattr(exc, "code", None)
            if isinstance(exc, DALServiceError) and code and 400 <= code < 500 and code != 429:
                self.breaker.succeeded()
                raise TapError(f"TAP {self.name} at {self.url}: HTTP {code}: {exc}") from exc
            self.breaker.failed()
            raise TapUnavailableError(
                f"TAP {self.name} at {self.url}: {self.attempts} attempts failed "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        self.breaker.succeeded()
        return self._matches(table, ra, dec, radius_arcsec)

    def match(
        self, positions: Sequence[tuple[float | None, float | None]], radius_arcsec: float
    ) -> list[list[CrossMatch]]:
        """One cone per position with coordinates (others get none), in input order.

        Stops at the first :class:`TapUnavailableError` (raised): the circuit is then open and
        the remaining cones would fail the same way.
        """
        return [
            []
            if ra is None or dec is None or not (math.isfinite(ra) and math.isfinite(dec))
            else self.cone(ra, dec, radius_arcsec)
            for ra, dec in positions
        ]

    def _matches(self, table: Any, ra: float, dec: float, radius_arcsec: float) -> list[CrossMatch]:
        names = set(table.colnames)
        missing = {"object_id", "ra", "dec"} - names
        if missing:
            raise TapError(
                f"TAP {self.name} at {self.url}: result lacks columns {sorted(missing)}; "
                f"has {sorted(names)}"
            )
        if len(table) == 0:
            return []
        obj_ra = np.ma.filled(np.ma.asarray(table["ra"], dtype=np.float64), np.nan)
        obj_dec = np.ma.filled(np.ma.asarray(table["dec"], dtype=np.float64), np.nan)
        usable = np.isfinite(obj_ra) & np.isfinite(obj_dec)
        here = SkyCoord(ra=ra * u.deg, dec=dec * u.deg)
        sep = np.full(len(table), np.inf)
        if usable.any():
            there = SkyCoord(ra=obj_ra[usable] * u.deg, dec=obj_dec[usable] * u.deg)
            sep[usable] = here.separation(there).to_value(u.arcsec)
        out: list[CrossMatch] = []
        for i in np.flatnonzero(sep <= radius_arcsec):
            row = table[int(i)]
            out.append(
                CrossMatch(
                    catalog=self.name,
                    object_id=_text(row["object_id"]) or f"row {int(i)}",
                    separation_arcsec=float(sep[i]),
                    magnitude=_number(row["magnitude"]) if "magnitude" in names else None,
                    kind=(_text(row["kind"]) if "kind" in names else None) or self.query.kind,
                )
            )
        out.sort(key=lambda m: (m["separation_arcsec"], m["object_id"]))
        return out


def _text(value: Any) -> str | None:
    if value is None or np.ma.is_masked(value):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    return text or None


def _number(value: Any) -> float | None:
    if value is None or np.ma.is_masked(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None

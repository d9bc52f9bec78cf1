"""The HTTP core's parts on their own: token bucket, breaker states, Retry-After, payload checks.
Time is a clock the test advances; the server is the local fake survey."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import numpy as np
import pytest
from astropy.io import fits

from processors.core.exceptions import PermanentFetchError, TransientFetchError
from processors.ingest.counters import SourceCounters
from processors.ingest.surveys.http import CircuitBreaker, HttpPolicy, RateLimit, SurveyHttp
from processors.ingest.surveys.payloads import Expected, check_payload
from tests.ingest.fake_survey import fake_survey, galaxy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limit = RateLimit(rate_per_s=10, burst=2, clock=clock)
    assert [round(limit.delay(), 3) for _ in range(4)] == [0.0, 0.0, 0.1, 0.2]
    clock.now += 1.0  # refilled to the burst, not beyond
    assert [round(limit.delay(), 3) for _ in range(3)] == [0.0, 0.0, 0.1]


def test_breaker_opens_probes_once_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, reset_s=10, clock=clock)
    for _ in range(2):
        breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow() and breaker.opened == 1
    clock.now += 9.9
    assert not breaker.allow() and breaker.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.state == "half-open" and breaker.allow()
    assert not breaker.allow()  # one probe at a time
    breaker.failure()  # the probe failed: open again at once
    assert breaker.state == "open" and breaker.opened == 2
    clock.now += 10
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.retry_in() == 0


@pytest.mark.parametrize("header", ["3", "date"])
def test_retry_after_is_honoured_as_seconds_or_a_date(header: str) -> None:
    slept: list[float] = []
    policy = HttpPolicy(attempts=2, backoff_s=0.01, max_backoff_s=30, read_timeout_s=2)
    with fake_survey() as survey:
        later = datetime.now(UTC) + timedelta(seconds=4)
        survey.retry_after = "3" if header == "3" else format_datetime(later, usegmt=True)
        survey.plan("hla", ["429"])
        http = SurveyHttp(survey.base_url("hla"), policy, SourceCounters(), sleep=slept.append)
        body = http.get("fitscut.cgi", {"ra": 1.0, "dec": 2.0, "size": 16}, lambda b, _c: b)
        http.close()
    assert body.startswith(b"SIMPLE")
    (wait,) = [s for s in slept if s > 0.05]
    assert (2.9 <= wait <= 3.0) if header == "3" else (2.0 <= wait <= 4.0)
    assert http.counters.snapshot()["errors.Http429"] == 1


def test_back_off_grows_exponentially_with_jitter_and_a_cap() -> None:
    slept: list[float] = []
    # a rate limit this test never reaches: its own waits share the sleep being recorded
    policy = HttpPolicy(
        attempts=6,
        backoff_s=0.1,
        max_backoff_s=0.5,
        read_timeout_s=2,
        breaker_failures=10,
        rate_per_s=1000,
        burst=1000,
    )
    with fake_survey() as survey:
        survey.plan("hla", ["500"] * 5)
        http = SurveyHttp(survey.base_url("hla"), policy, SourceCounters(), sleep=slept.append)
        http.get("fitscut.cgi", {"ra": 1.0, "dec": 2.0, "size": 16}, lambda b, _c: b)
        http.close()
    waits = list(slept)
    assert len(waits) == 5
    for n, wait in enumerate(waits, start=1):
        floor = min(0.1 * 2 ** (n - 1), 0.5)
        assert floor <= wait <= floor + 0.1 + 1e-9, (n, waits)


def _fits(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(array.astype(np.float32)).writeto(buf)
    return buf.getvalue()


def test_payload_checks_name_what_is_wrong() -> None:
    good = _fits(galaxy(1.0, 2.0, 16)[:, :, 0])
    assert check_payload(good, "application/fits", Expected("fits", 16, 16, 1)).width == 16
    cases: list[tuple[bytes, str, Expected, type[Exception], str]] = [
        (
            b"<html><body>Down</body></html>",
            "text/html",
            Expected("fits"),
            TransientFetchError,
            "HtmlErrorPage",
        ),
        (
            b'{"error": "quota"}',
            "application/json",
            Expected("fits"),
            TransientFetchError,
            "JsonErrorPage",
        ),
        (good[:5000], "application/fits", Expected("fits"), TransientFetchError, "TruncatedFits"),
        (b"\x00\x01garbage", "image/jpeg", Expected("jpeg"), TransientFetchError, "Undecodable"),
        (good, "application/fits", Expected("jpeg"), PermanentFetchError, "WrongFormat"),
        (good, "application/fits", Expected("fits", 32, 32), PermanentFetchError, "WrongSize"),
        (good, "application/fits", Expected("fits", 16, 16, 3), PermanentFetchError, "WrongBands"),
        (_fits(np.zeros((16, 16))), "", Expected("fits"), PermanentFetchError, "BlankImage"),
        (_fits(np.full((16, 16), np.nan)), "", Expected("fits"), PermanentFetchError, "BlankImage"),
        (_fits(np.full((16, 16), 7.0)), "", Expected("fits"), PermanentFetchError, "ConstantImage"),
    ]
    for body, ctype, expected, kind, error_class in cases:
        with pytest.raises(kind) as caught:
            check_payload(body, ctype, expected)
        assert caught.value.error_class == error_class  # type: ignore[attr-defined]

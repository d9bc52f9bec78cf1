"""HTTP for survey clients: timeouts, a rate limit, retries with back-off, a circuit breaker.

One :class:`SurveyHttp` per source (its limit and breaker are that source's). Each request:

1. waits for the source's :class:`RateLimit` (a token bucket: ``rate_per_s``, ``burst``);
2. asks the :class:`CircuitBreaker`: while it is open no request is sent
   (:class:`CircuitOpen`, transient, the caller retries the target later);
3. is sent with connect and read timeouts and a whole-response deadline (``total_timeout_s``,
   which a slow drip of bytes cannot escape) and a size cap;
4. is classified: 2xx bodies go through the caller's check (e.g.
   :func:`~processors.ingest.surveys.payloads.check_payload`); 429, 5xx, 408, timeouts, resets and
   transient payload failures raise :class:`TransientFetchError` (``Retry-After`` kept); other
   4xx raise :class:`PermanentFetchError`;
5. is retried by tenacity up to ``attempts`` times on transient failures: exponential back-off
   with jitter (``backoff_s`` doubling up to ``max_backoff_s``), or the server's
   ``Retry-After`` when it is longer (capped at ``max_backoff_s``).

Every failed attempt counts in ``counters``: ``errors`` and ``errors.<class>``; attempts are
``requests``, waits before another attempt ``retries``. Transport failures and 5xx/429 count
against the breaker; permanent answers and payload checks do not (the service is up).
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from processors.core.exceptions import ConfigError, PermanentFetchError, TransientFetchError
from processors.ingest.counters import SourceCounters

__all__ = ["CircuitBreaker", "CircuitOpen", "HttpPolicy", "RateLimit", "SurveyHttp"]

T = TypeVar("T")
Clock = Callable[[], float]


class CircuitOpen(TransientFetchError):
    """The source's breaker is open: nothing was sent; try again in ``retry_after_s``."""


@dataclass(frozen=True)
class HttpPolicy:
    """How a source talks to its service; every field is a spec option of the survey sources."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    total_timeout_s: float = 60.0
    rate_per_s: float = 5.0
    burst: int = 5
    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    max_bytes: int = 4_000_000

    def __post_init__(self) -> None:
        for key in ("connect_timeout_s", "read_timeout_s", "total_timeout_s", "rate_per_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key}={getattr(self, key)!r}: accepted values are > 0")
        for key in ("burst", "attempts", "breaker_failures", "max_bytes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)!r}: accepted values are >= 1")
        for key in ("backoff_s", "max_backoff_s", "breaker_reset_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)!r}: accepted values are >= 0")


class RateLimit:
    """Token bucket: at most ``burst`` requests at once, ``rate_per_s`` on average."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def delay(self) -> float:
        """Take a token; the seconds to wait before using it (0 when one was there)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
            self._at = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s


class CircuitBreaker:
    """Closed -> open after ``failures`` failures in a row -> half-open after ``reset_s`` (one
    probe allowed) -> closed on the probe's success, open again on its failure."""

    def __init__(self, failures: int, reset_s: float, clock: Clock = time.monotonic) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._streak = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened = 0
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._probing or self._clock() - self._opened_at >= self.reset_s:
                return "half-open"
            return "open"

    def retry_in(self) -> float:
        """Seconds until a request may be sent (0 when closed or ready to probe)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self._opened_at + self.reset_s - self._clock())

    def allow(self) -> bool:
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self._clock() - self._opened_at < self.reset_s:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        with self._lock:
            self._streak, self._opened_at, self._probing = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self._streak += 1
            if self._probing or (self._opened_at is None and self._streak >= self.failures):
                self._opened_at = self._clock()
                self.opened += 1
            self._probing = False


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110, section 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class SurveyHttp:
    """A source's HTTP client; see the module docstring. Close it when the source is done."""

    def __init__(
        self,
        base_url: str,
        policy: HttpPolicy | None = None,
        counters: SourceCounters | None = None,
        *,
        sleep: Callable[[float], Any] = time.sleep,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"base_url={base_url!r}: accepted values are http:// or https:// URLs"
            )
        self.base_url = base_url.rstrip("/")
        self.policy = policy or HttpPolicy()
        self.counters = counters or SourceCounters()
        self.limit = RateLimit(self.policy.rate_per_s, self.policy.burst)
        self.breaker = CircuitBreaker(self.policy.breaker_failures, self.policy.breaker_reset_s)
        self._sleep = sleep
        p = self.policy
        self._headers = {"User-Agent": "skyloop (survey ingestion)", **(headers or {})}
        self._client: httpx.Client | None = None  # opened at the first request
        # the last failure of a request that was sent (what a dead letter names when the
        # breaker opened on a target's own failures)
        self.last_error: TransientFetchError | PermanentFetchError | None = None
        # full exponential back-off plus up to one base step of jitter, so that many sources
        # failing together do not retry in lockstep
        self._backoff = wait_exponential(multiplier=p.backoff_s, max=p.max_backoff_s) + wait_random(
            0, p.backoff_s
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _session(self) -> httpx.Client:
        if self._client is None:
            p = self.policy
            self._client = httpx.Client(
                timeout=httpx.Timeout(p.read_timeout_s, connect=p.connect_timeout_s),
                headers=self._headers,
                follow_redirects=True,
            )
        return self._client

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path}"

    def get(
        self,
        path: str,
        params: Mapping[str, Any] | None,
        check: Callable[[bytes, str], T],
    ) -> T:
        """GET ``path`` (relative to the base URL, or absolute) and ``check(body, content_type)``.

        Returns what ``check`` returns; raises :class:`TransientFetchError` once ``attempts``
        are spent (the last failure's class) or :class:`PermanentFetchError` at once.
        """
        retrying = Retrying(
            stop=stop_after_attempt(self.policy.attempts),
            wait=self._wait,
            retry=retry_if_exception_type(TransientFetchError),
            before_sleep=lambda _state: self.counters.add("retries"),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(self._attempt, self.url(path), dict(params or {}), check)

    def _wait(self, state: RetryCallState) -> float:
        backoff = float(self._backoff(state))
        error = state.outcome.exception() if state.outcome is not None else None
        hinted = getattr(error, "retry_after_s", None)
        if hinted is None:
            return backoff
        return min(max(backoff, float(hinted)), self.policy.max_backoff_s)

    def _attempt(self, url: str, params: dict[str, Any], check: Callable[[bytes, str], T]) -> T:
        delay = self.limit.delay()
        if delay > 0:
            self._sleep(delay)
        if not self.breaker.allow():
            raise self._count(
                CircuitOpen(
                    "CircuitOpen",
                    "too many failures in a row; resting",
                    retry_after_s=self.breaker.retry_in(),
                )
            )
        self.counters.add("requests")
        try:
            status, body, ctype, retry_after = self._send(url, params)
        except TransientFetchError as exc:
            self.breaker.failure()
            raise self._count(exc) from None
        except PermanentFetchError as exc:
            raise self._count(exc) from None
        if status == 429 or status >= 500 or status == 408:
            self.breaker.failure()
            snippet = body[:80].decode("utf-8", "replace").strip()
            raise self._count(TransientFetchError(f"Http{status}", snippet, retry_after))
        self.breaker.success()
        if status >= 400:
            snippet = body[:80].decode("utf-8", "replace").strip()
            raise self._count(PermanentFetchError(f"Http{status}", f"{url}: {snippet}"))
        try:
            return check(body, ctype)
        except (TransientFetchError, PermanentFetchError) as exc:
            raise self._count(exc) from None

    def _count(self, exc: Any) -> Any:
        self.counters.add_detail("errors", exc.error_class)
        if not isinstance(exc, CircuitOpen):
            self.last_error = exc
        return exc

    def _send(self, url: str, params: dict[str, Any]) -> tuple[int, bytes, str, float | None]:
        deadline = time.monotonic() + self.policy.total_timeout_s
        try:
            with self._session().stream("GET", url, params=params) as response:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.policy.max_bytes:
                        raise PermanentFetchError(
                            "OversizedPayload", f"more than {self.policy.max_bytes} bytes"
                        )
                    if time.monotonic() > deadline:
                        raise TransientFetchError(
                            "SlowResponse",
                            f"{size} bytes in {self.policy.total_timeout_s}s (total_timeout_s)",
                        )
                return (
                    response.status_code,
                    b"".join(chunks),
                    response.headers.get("content-type", ""),
                    _retry_after(response.headers.get("retry-after")),
                )
        except httpx.TimeoutException as exc:
            raise TransientFetchError(type(exc).__name__, f"{url}: {exc}") from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise TransientFetchError("ConnectionError", f"{type(exc).__name__}: {exc}") from None

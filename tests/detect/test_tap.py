"""TapCatalog against the local fake TAP service of ``conftest.py`` (``fake``)."""

from __future__ import annotations

import doctest

import pytest

from processors.core.exceptions import TapError, TapUnavailableError
from processors.detect import tap as tap_module
from processors.detect.tap import SIMBAD, CircuitBreaker, TapCatalog
from tests.detect.conftest import CENTER, FakeTap


def _client(fake: FakeTap, *script: str, **kwargs: object) -> TapCatalog:
    fake.script = list(script)
    options: dict = {"timeout_s": 0.3, "attempts": 3, "backoff_s": 0.0} | kwargs
    return TapCatalog(SIMBAD, url=fake.url, **options)


def _cone(client: TapCatalog, radius: float = 2.0) -> list:
    return client.cone(float(CENTER.ra.deg), float(CENTER.dec.deg), radius)


def test_doctests() -> None:
    result = doctest.testmod(tap_module)
    assert result.attempted > 0 and result.failed == 0


def test_a_cone_returns_objects_within_the_radius_with_separations_computed_here(
    fake: FakeTap,
) -> None:
    matches = _cone(_client(fake, "ok"))
    assert [m["object_id"] for m in matches] == ["* alf Lyr"]  # the 5" one is outside 2"
    assert matches[0]["separation_arcsec"] == pytest.approx(0.8, abs=1e-3)
    assert matches[0]["catalog"] == "simbad" and matches[0]["kind"] == "PulsV*"
    assert matches[0]["magnitude"] is None  # empty cell
    [adql] = fake.queries
    assert "CIRCLE('ICRS', 279.2347, 38.7837, 0.000555" in adql and "TOP 20" in adql
    wide = _cone(_client(fake, "ok"), radius=6.0)
    assert [m["object_id"] for m in wide] == ["* alf Lyr", "far one"]
    assert wide[1]["magnitude"] == 9.5


def test_a_500_is_retried_and_the_next_answer_used(fake: FakeTap) -> None:
    matches = _cone(_client(fake, "500", "500", "ok"))
    assert [m["object_id"] for m in matches] == ["* alf Lyr"]
    assert len(fake.queries) == 3


@pytest.mark.parametrize("behaviour", ["500", "stall", "malformed"])
def test_a_failure_that_lasts_gives_up_after_the_attempts(fake: FakeTap, behaviour: str) -> None:
    client = _client(fake, behaviour, attempts=2)
    with pytest.raises(TapUnavailableError, match="2 attempts failed"):
        _cone(client)
    assert len(fake.queries) == 2
    assert client.breaker.consecutive_failures == 1


@pytest.mark.parametrize("behaviour", ["query_error", "400"])
def test_a_rejected_query_is_not_retried(fake: FakeTap, behaviour: str) -> None:
    client = _client(fake, behaviour)
    with pytest.raises(TapError) as err:
        _cone(client)
    assert not isinstance(err.value, TapUnavailableError)
    assert len(fake.queries) == 1
    assert client.breaker.state == "closed"  # the service answered


def test_the_circuit_opens_after_failures_and_a_trial_closes_it(fake: FakeTap) -> None:
    now = [100.0]
    breaker = CircuitBreaker(failures_to_open=2, open_s=60.0, clock=lambda: now[0])
    client = _client(fake, "500", "500", "500", "500", "ok", attempts=2, breaker=breaker)
    for _ in range(2):
        with pytest.raises(TapUnavailableError, match="attempts failed"):
            _cone(client)
    assert breaker.state == "open" and len(fake.queries) == 4
    with pytest.raises(TapUnavailableError, match="circuit open"):
        _cone(client)
    assert len(fake.queries) == 4  # refused without a request
    now[0] += 60.0
    assert breaker.state == "half-open"
    assert [m["object_id"] for m in _cone(client)] == ["* alf Lyr"]
    assert breaker.state == "closed" and len(fake.queries) == 5


def test_match_skips_positions_it_does_not_have(fake: FakeTap) -> None:
    client = _client(fake, "ok")
    got = client.match([(None, None), (float(CENTER.ra.deg), float(CENTER.dec.deg))], 2.0)
    assert [len(m) for m in got] == [0, 1] and len(fake.queries) == 1


def test_a_result_without_the_expected_columns_is_a_tap_error(fake: FakeTap) -> None:
    client = _client(fake, "no_position")
    with pytest.raises(TapError, match=r"lacks columns \['dec', 'ra'\]"):
        _cone(client)

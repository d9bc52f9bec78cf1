"""TapCatalog against a local fake TAP service that can also misbehave.

The fake speaks TAP's synchronous protocol (``POST /sync`` with ``QUERY``, VOTable back) and
answers each request by the next scripted behaviour: a result, HTTP 500, a stall past the
client's timeout, a malformed VOTable, a VOTable with ``QUERY_STATUS=ERROR``, HTTP 400.
"""

from __future__ import annotations

import doctest
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import astropy.units as u
import pytest
from astropy.coordinates import SkyCoord

from processors.core.exceptions import TapError, TapUnavailableError
from processors.detect import tap as tap_module
from processors.detect.tap import SIMBAD, CircuitBreaker, TapCatalog

CENTER = SkyCoord(ra=279.2347 * u.deg, dec=38.7837 * u.deg)
NEAR = CENTER.directional_offset_by(10 * u.deg, 0.8 * u.arcsec)
FAR = CENTER.directional_offset_by(200 * u.deg, 5.0 * u.arcsec)


def _votable(rows: list[tuple[str, float, float, str, str]]) -> bytes:
    cells = "".join(
        f"<TR><TD>{oid}</TD><TD>{ra!r}</TD><TD>{dec!r}</TD><TD>{kind}</TD><TD>{mag}</TD></TR>"
        for oid, ra, dec, kind, mag in rows
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
<RESOURCE type="results">
<INFO name="QUERY_STATUS" value="OK"/>
<TABLE>
<FIELD name="object_id" datatype="char" arraysize="*"/>
<FIELD name="ra" datatype="double" unit="deg"/>
<FIELD name="dec" datatype="double" unit="deg"/>
<FIELD name="kind" datatype="char" arraysize="*"/>
<FIELD name="magnitude" datatype="double"/>
<DATA><TABLEDATA>{cells}</TABLEDATA></DATA>
</TABLE>
</RESOURCE>
</VOTABLE>""".encode()


RESULT = _votable(
    [
        ("far one", float(FAR.ra.deg), float(FAR.dec.deg), "*", "9.5"),
        ("* alf Lyr", float(NEAR.ra.deg), float(NEAR.dec.deg), "PulsV*", ""),
    ]
)
QUERY_ERROR = b"""<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
<RESOURCE type="results">
<INFO name="QUERY_STATUS" value="ERROR">Incorrect ADQL query: unknown column</INFO>
</RESOURCE>
</VOTABLE>"""


@dataclass
class FakeTap:
    """Scripted answers; once the script runs out, the last behaviour repeats."""

    url: str = ""
    script: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    stall_s: float = 1.0

    def next_behaviour(self) -> str:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


@pytest.fixture
def fake() -> Iterator[FakeTap]:
    state = FakeTap()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            if self.path.rstrip("/") != "/tap/sync":
                self._answer(404, b"no such endpoint", "text/plain")
                return
            state.queries.append(form.get("QUERY", [""])[0])
            behaviour = state.next_behaviour()
            if behaviour == "ok":
                self._answer(200, RESULT)
            elif behaviour == "500":
                self._answer(500, b"<html>Internal Server Error</html>", "text/html")
            elif behaviour == "stall":
                time.sleep(state.stall_s)
                self._answer(200, RESULT)
            elif behaviour == "malformed":
                self._answer(200, b"<VOTABLE><RESOURCE><TABLE><FIELD name=")
            elif behaviour == "query_error":
                self._answer(200, QUERY_ERROR)
            elif behaviour == "no_position":
                self._answer(
                    200,
                    RESULT.replace(b'name="ra"', b'name="x"').replace(b'name="dec"', b'name="y"'),
                )
            elif behaviour == "400":
                self._answer(400, b"bad request: QUERY missing", "text/plain")

        def _answer(self, code: int, body: bytes, kind: str = "application/x-votable+xml"):
            try:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): what a stalled service sees

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/tap"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


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

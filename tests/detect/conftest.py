"""Shared by the detect tests: a local fake TAP service that can also misbehave.

The fake speaks TAP's synchronous protocol (``POST /sync`` with ``QUERY``, VOTable back) and
answers each request by the next scripted behaviour: a result, HTTP 500, a stall past the
client's timeout, a malformed VOTable, a VOTable with ``QUERY_STATUS=ERROR``, HTTP 400, a table
without positions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import astropy.units as u
import pytest
from astropy.coordinates import SkyCoord

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

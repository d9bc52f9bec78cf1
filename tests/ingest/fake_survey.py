"""A local HTTP server that plays the survey cutout services, well and badly.

Routes (each under its own prefix, so one server stands for every survey):
  /sdss/getjpeg                              SkyServer ImgCutout (JPEG, width x height)
  /decals/cutout.fits, /decals/cutout.jpg    Legacy Survey (FITS cube per band, or JPEG)
  /ps1/ps1filenames.py, /ps1/fitscut.cgi     Pan-STARRS file lookup table, then FITS
  /irsa/ibe/search/ztf/products/sci          IBE search (CSV); /irsa/ibe/data/... FITS
  /hla/fitscut.cgi                           HLA fitscut (FITS)
  /skysql/SqlSearch                          SkyServer SQL search (a cone's galaxies, CSV)

Payloads are realistic and deterministic per position: a galaxy (exponential disc), a few stars
and sky noise, so the same target always gives the same bytes. Faults are queued per route
(``server.plan(route, faults)``; each request pops one) or pinned to a position
(``server.always[(ra, dec)] = fault``). Faults: ``429`` (with ``Retry-After``), ``500``,
``503``, ``404``, ``reset`` (connection dropped before any answer), ``timeout`` (no answer
within the client's read timeout), ``cut`` (connection dropped mid-body), ``truncated`` (a
FITS body cut short but served whole with 200), ``html200`` / ``json200`` (error pages with
status 200), ``drip`` (the body a few bytes at a time), ``blank`` (all-zero pixels), ``small``
(the wrong size).
"""

from __future__ import annotations

import io
import json
import re
import socket
import struct
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
from astropy.io import fits
from PIL import Image

__all__ = ["FakeSurvey", "fake_survey", "galaxy"]

ROUTES = ("sdss", "decals", "ps1", "irsa", "hla", "skysql")


def galaxy(ra: float, dec: float, size: int, bands: int = 1) -> np.ndarray:
    """A (size, size, bands) float image: disc galaxy, stars, sky noise; seeded by position."""
    rng = np.random.default_rng([int(ra * 1e6) % 2**32, int((dec + 90) * 1e6) % 2**32])
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (size - 1) / 2
    q, theta = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
    xr = (x - c) * np.cos(theta) + (y - c) * np.sin(theta)
    yr = -(x - c) * np.sin(theta) + (y - c) * np.cos(theta)
    disc = np.exp(-np.hypot(xr, yr / q) / rng.uniform(2.0, size / 8))
    out = np.empty((size, size, bands))
    for b in range(bands):
        img = 100.0 + 400.0 * disc * (0.7 + 0.15 * b)
        for _ in range(3):
            sy, sx = rng.uniform(0, size, 2)
            img += 300.0 * np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / 2.0)
        out[:, :, b] = img + rng.normal(0, 5.0, (size, size))
    return out


def _fits(array: np.ndarray) -> bytes:
    data = np.moveaxis(array.astype(np.float32), -1, 0)
    data = data[0] if data.shape[0] == 1 else data
    buf = io.BytesIO()
    fits.PrimaryHDU(data).writeto(buf)
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    scaled = np.clip((array - 80.0) / 600.0 * 255.0, 0, 255).astype(np.uint8)
    if scaled.shape[2] == 1:
        scaled = np.repeat(scaled, 3, axis=2)
    buf = io.BytesIO()
    Image.fromarray(scaled[:, :, :3]).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


class FakeSurvey:
    """The server's state: queued faults, pinned faults, and a log of what was asked."""

    def __init__(self) -> None:
        self.queued: dict[str, deque[str]] = defaultdict(deque)
        self.always: dict[tuple[float, float], str] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.retry_after = "1"
        self.stall_s = 1.0
        self._lock = threading.Lock()
        self.url = ""

    def plan(self, route: str, faults: Iterable[str]) -> None:
        with self._lock:
            self.queued[route].extend(faults)

    def base_url(self, route: str) -> str:
        return f"{self.url}/{route}"

    def count(self, route: str) -> int:
        with self._lock:
            return sum(1 for r, _ in self.requests if r == route)

    def _next_fault(self, route: str, position: tuple[float, float] | None) -> str | None:
        with self._lock:
            if position is not None and position in self.always:
                return self.always[position]
            return self.queued[route].popleft() if self.queued[route] else None

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        query = {k.lower(): v[-1] for k, v in parse_qs(url.query).items()}
        route, _, rest = url.path.lstrip("/").partition("/")
        with self._lock:
            self.requests.append((route, query))
        position = _position(query)
        fault = self._next_fault(route, position)
        if fault in ("reset", "timeout"):
            if fault == "timeout":
                time.sleep(self.stall_s)
            _reset(handler)
            return
        if fault in ("429", "500", "503", "404"):
            headers = {"Retry-After": self.retry_after} if fault == "429" else {}
            _send(handler, int(fault), b"try again later", "text/plain", headers)
            return
        if fault == "html200":
            page = b"<!DOCTYPE html><html><body><h1>Service maintenance</h1></body></html>"
            _send(handler, 200, page, "text/html")
            return
        if fault == "json200":
            _send(handler, 200, json.dumps({"error": "quota"}).encode(), "application/json")
            return
        body, ctype = self._payload(route, rest, query, position, fault)
        if fault == "truncated":
            body = body[: len(body) // 2]
        if fault == "cut":
            _send_cut(handler, body, ctype)
        elif fault == "drip":
            _send_drip(handler, body, ctype)
        else:
            _send(handler, 200 if body else 404, body or b"not found", ctype)

    def _payload(
        self,
        route: str,
        rest: str,
        query: dict[str, str],
        position: tuple[float, float] | None,
        fault: str | None,
    ) -> tuple[bytes, str]:
        if route == "ps1" and rest == "ps1filenames.py":
            header = "projcell subcell ra dec filter mjd type filename shortname badflag"
            f = query.get("filters", "r")
            row = (
                f"2381 45 {query['ra']} {query['dec']} {f} 0 stack "
                f"/rings.v3.skycell/2381/045/rings.v3.skycell.2381.045.stk.{f}.unconv.fits "
                f"rings.v3.skycell.2381.045.stk.{f}.unconv.fits 0"
            )
            rows = "" if position is not None and position[1] < -30 else row
            return f"{header}\n{rows}\n".encode(), "text/plain"
        if route == "skysql" and rest == "SqlSearch":
            match = re.search(
                r"TOP (\d+).*fGetNearbyObjEq\(([-\d.]+), ([-\d.]+), ([\d.]+)\)",
                query.get("cmd", ""),
            )
            if match is None or query.get("format") != "csv":
                return b"bad query", "text/plain"
            top, ra, dec, radius = (float(g) for g in match.groups())
            rows = [
                f"{1237650000000000000 + i},{ra + (i + 1) * radius / 60 / 10:.6f},{dec:.6f}"
                for i in range(int(top))
            ]
            return ("#Table1\nobjid,ra,dec\n" + "\n".join(rows) + "\n").encode(), "text/plain"
        if route == "irsa" and rest.startswith("ibe/search"):
            ra, dec = query["pos"].split(",")
            cols = "field,ccdid,qid,filtercode,imgtypecode,filefracday,obsjd,ra,dec"
            rows = [
                f"600,5,2,zr,o,20200101123456,2458850.0,{ra},{dec}",
                f"600,5,2,zr,o,20210304112233,2459277.9,{ra},{dec}",
            ]
            return (cols + "\n" + "\n".join(rows) + "\n").encode(), "text/csv"
        if position is None:
            return b"", "text/plain"
        size = int(query.get("size", query.get("width", "64")).removesuffix("pix"))
        if fault == "small":
            size //= 2
        bands = len(query.get("bands", "r")) if rest == "cutout.fits" else 1
        array = galaxy(position[0], position[1], size, bands)
        if fault == "blank":
            array = np.zeros_like(array)
        if rest in ("getjpeg", "cutout.jpg") or query.get("format") == "jpeg":
            return _jpeg(array), "image/jpeg"
        return _fits(array), "application/fits"


def _position(query: dict[str, str]) -> tuple[float, float] | None:
    try:
        if "center" in query:
            ra, dec = query["center"].split(",")
            return round(float(ra), 5), round(float(dec), 5)
        if "ra" in query and "dec" in query:
            return round(float(query["ra"]), 5), round(float(query["dec"]), 5)
    except ValueError:
        return None
    return None


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    ctype: str,
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def _reset(handler: BaseHTTPRequestHandler) -> None:
    """Close with RST (SO_LINGER 0): the client sees a connection reset, not an answer."""
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.close_connection = True
    handler.connection.close()


def _send_cut(handler: BaseHTTPRequestHandler, body: bytes, ctype: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body[: len(body) // 3])
    handler.wfile.flush()
    _reset(handler)


def _send_drip(handler: BaseHTTPRequestHandler, body: bytes, ctype: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    try:
        for i in range(0, len(body), 256):
            handler.wfile.write(body[i : i + 256])
            handler.wfile.flush()
            time.sleep(0.02)
    except (BrokenPipeError, ConnectionResetError):
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    survey: FakeSurvey

    def do_GET(self) -> None:
        with suppress(BrokenPipeError, ConnectionResetError):
            self.survey.answer(self)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def fake_survey() -> Iterator[FakeSurvey]:
    """A running fake survey on 127.0.0.1 (an ephemeral port) for the ``with`` block."""
    survey = FakeSurvey()
    handler = type("Handler", (_Handler,), {"survey": survey})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    survey.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield survey
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

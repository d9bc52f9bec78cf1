"""A loopback HTTP endpoint through which ``skyloop sql`` queries the sink's chdb while it runs.

Only one OS process may open a chdb path, and the sink owns it during a run; other processes
send SQL here instead (POST /sql, body = the query, the run's token in the ``X-Skyloop-Token``
header; JSON ``{"columns": [...], "rows": [...]}`` back, or ``{"error": "..."}`` with status
401 (no or a wrong token), 403 (a refused query: :mod:`processors.sink.sql_guard`, with
``"refused": true``), 413 (a body over 1 MiB) or 400 (any other failure)). Binds 127.0.0.1
only. Queries run on a read-only client of their own (:mod:`processors.sink.sql_guard`,
bounded by its ``LIVE``: 5 s and 200,000 rows a query), and share one lock with the sink's
inserts: chdb is not thread-safe. The time limit bounds how long an insert waits.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

from clickhouse_connect.driver.client import Client

from processors.core.query_token import TOKEN_HEADER
from processors.sink.sql_guard import LIVE, QueryRefused, answer, read_only

__all__ = ["QueryServer", "jsonable"]


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


MAX_BODY = 1024 * 1024
"""The longest query text the endpoint reads (bytes)."""


class QueryServer:
    """Serves read-only SQL to requests that carry ``token``, on a client from ``open_client``
    (made :func:`read_only` here; no other code uses it). After a query fails the client is
    replaced: a result cut off by a bound leaves the rest of its stream in chdb's handle, which
    the next query would read as its own."""

    def __init__(self, open_client: Callable[[], Client], lock: threading.Lock, token: str) -> None:
        if not token:
            raise ValueError("the query endpoint needs a token")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body, status = outer.handle(
                    self.headers.get(TOKEN_HEADER, ""),
                    int(self.headers.get("Content-Length") or 0),
                    self.rfile,
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._open = open_client
        self.client = read_only(open_client(), LIVE)
        self.lock = lock
        self.token = token
        self._gate = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, token: str, length: int, body: Any) -> tuple[dict[str, Any], int]:
        """The reply to one request: (JSON body, HTTP status)."""
        sql = body.read(length).decode("utf-8", "replace") if length <= MAX_BODY else ""
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            return {
                "error": f"the sink's query endpoint needs the run's token in the {TOKEN_HEADER} "
                "header (skyloop sql sends it, read from the run folder's sink.json)"
            }, 401
        if length > MAX_BODY:
            return {"error": f"query text over {MAX_BODY} bytes"}, 413
        try:
            # one query at a time waits for the sink's lock, so queries cannot queue up ahead
            # of an insert that waits for it too
            with self._gate, self.lock:
                columns, rows = answer(self.client, sql, LIVE)
        except QueryRefused as exc:
            self._renew()
            return {"error": str(exc), "refused": True}, 403
        except Exception as exc:  # any SQL error goes back to the asker
            self._renew()
            return {"error": str(exc)}, 400
        return {"columns": columns, "rows": jsonable(rows)}, 200

    def _renew(self) -> None:
        with self.lock:
            self.client.close()
            self.client = read_only(self._open(), LIVE)

    def start(self) -> QueryServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()

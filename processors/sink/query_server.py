"""A loopback HTTP endpoint through which ``skyloop sql`` queries the sink's chdb while it runs.

Only one OS process may open a chdb path, and the sink owns it during a run; other processes
send SQL here instead (POST /sql, body = the query; JSON ``{"columns": [...], "rows": [...]}``
back, or ``{"error": "..."}`` with status 400). Binds 127.0.0.1 only. Queries and the sink's
inserts share one lock: the chdb client is not thread-safe.
"""

from __future__ import annotations

import json
import threading
from datetime import date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

from clickhouse_connect.driver.client import Client

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


class QueryServer:
    def __init__(self, client: Client, lock: threading.Lock) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                sql = self.rfile.read(length).decode()
                try:
                    with outer.lock:
                        result = outer.client.query(sql)
                    body = {
                        "columns": list(result.column_names),
                        "rows": jsonable(result.result_rows),
                    }
                    status = 200
                except Exception as exc:  # any SQL error goes back to the asker
                    body, status = {"error": str(exc)}, 400
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.client = client
        self.lock = lock
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> QueryServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""Connect to ClickHouse by DSN: in-process chdb locally, a server over HTTP(S) in production.

Accepted DSNs (the same client API either way):

- ``chdb:///absolute/path`` — the embedded engine, data in that directory (created if missing).
  chdb hosts one engine per OS process, so a process may have clients on one path at a time;
  it can switch paths once all its clients are closed. Another process cannot open a path that
  is open (ARCHITECTURE.md, "The local stack": the sink process owns it locally).
- ``http://user:password@host:8123/database`` or ``https://...`` — a ClickHouse server.

Tables are unqualified in every query skyloop runs, so they live in the client's database: the
DSN's (HTTP) or ``default`` unless :func:`connect` is given one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ProgrammingError

from processors.core.config import Settings
from processors.core.exceptions import ConfigError, StackError

__all__ = [
    "ACCEPTED_DSN_FORMS",
    "HELD_WAIT_S",
    "Client",
    "client_options",
    "connect",
    "is_embedded",
    "redact_dsn",
]

HELD_WAIT_S = 30.0
"""How long a run's own processes (its report, a restarted sink) wait for another process to
let go of the run's chdb directory: a ``skyloop sql`` reading the files, a sink stopping."""
ACCEPTED_DSN_FORMS = "chdb:///absolute/path, http://user:password@host:8123/database or https://..."


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***``, fit for logs and error messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _chdb_path(dsn: str) -> Path:
    parts = urlsplit(dsn)
    if parts.netloc or not parts.path.startswith("/") or parts.query:
        raise ConfigError(
            f"clickhouse dsn {dsn!r}: a chdb DSN is chdb:/// followed by an absolute directory "
            f"path; accepted forms: {ACCEPTED_DSN_FORMS}"
        )
    return Path(parts.path)


def client_options(settings: Settings) -> dict[str, Any]:
    """Credentials and TLS options of ``settings`` for :func:`connect` (http(s) DSNs only).

    They keep secrets out of the DSN: a deployment sets ``SKYLOOP_CLICKHOUSE_PASSWORD`` from
    its secret store and a DSN without a password.
    """
    options: dict[str, Any] = {}
    if settings.clickhouse.username is not None:
        options["username"] = settings.clickhouse.username
    if settings.clickhouse.password is not None:
        options["password"] = settings.clickhouse.password.get_secret_value()
    for key, path in (
        ("ca_cert", settings.clickhouse.ca_cert),
        ("client_cert", settings.clickhouse.client_cert),
        ("client_cert_key", settings.clickhouse.client_key),
    ):
        if path is not None:
            options[key] = str(path)
    if not settings.clickhouse.verify:
        options["verify"] = False
    return options


def _open_chdb(dsn: str, wait_s: float) -> Client:
    path = _chdb_path(dsn)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"clickhouse dsn {dsn!r}: cannot create {path}: {exc}") from exc
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return clickhouse_connect.get_client(dsn=f"chdb://{path}")
        except ProgrammingError as exc:
            if time.monotonic() < deadline:
                time.sleep(0.25)
                continue
            waited = f" (asked for {wait_s:.0f} s)" if wait_s > 0 else ""
            raise StackError(
                f"cannot open chdb at {path}{waited}: one OS process may open a chdb directory, "
                f"and a process may have clients on one directory at a time ({exc})"
            ) from exc


def is_embedded(client: Client) -> bool:
    """Whether ``client`` runs the engine in this process (chdb) rather than talking to a server."""
    from clickhouse_connect.driver._chdbclient import ChdbClient

    return isinstance(client, ChdbClient)


def connect(
    dsn: str, *, database: str | None = None, wait_s: float = 0.0, **options: Any
) -> Client:
    """Open a ClickHouse client for ``dsn``; with ``database``, create it if missing and use it.

    ``options`` (from :func:`client_options`) apply to a server; chdb has no transport to
    secure and ignores them. Raises :class:`ConfigError` for a DSN of any other form (naming
    the accepted ones) and :class:`StackError` when the chdb engine cannot open its directory
    (typically: another process holds it, or this process has clients open on another path),
    after asking again every 0.25 s for ``wait_s`` seconds (a ``skyloop sql`` reading the
    files, or a sink stopping, holds them for a moment).
    """
    scheme = urlsplit(dsn).scheme.lower()
    if scheme == "chdb":
        client = _open_chdb(dsn, wait_s)
    elif scheme in ("http", "https"):
        client = clickhouse_connect.get_client(dsn=dsn, **options)
    else:
        raise ConfigError(
            f"clickhouse dsn {redact_dsn(dsn)!r} is not supported; accepted forms: "
            f"{ACCEPTED_DSN_FORMS}"
        )
    if database:
        client.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
        client.database = database
    return client

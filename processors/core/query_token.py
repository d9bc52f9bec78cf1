"""The per-run token of the sink's query endpoint, and the private files that carry it.

``skyloop run`` makes one token per run (:func:`new_token`), keeps it in ``<run>/stack.json``
and hands it to the sink in the environment (:data:`TOKEN_ENV`, never on a command line); a
sink started on its own makes its own. The sink writes its port and the token to
``<data_dir>/sink.json``, which ``skyloop sql`` reads. Both files are written by
:func:`write_private`: mode 0600 from the moment they exist, replaced atomically, so no other
user can read the token and no reader sees half a file. Requests carry it in
:data:`TOKEN_HEADER`; the endpoint answers 401 without it.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["TOKEN_ENV", "TOKEN_HEADER", "endpoint", "new_token", "write_private"]

TOKEN_HEADER = "X-Skyloop-Token"
TOKEN_ENV = "SKYLOOP_QUERY_TOKEN"


def new_token() -> str:
    """256 random bits, URL-safe text."""
    return secrets.token_urlsafe(32)


def write_private(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` as JSON to ``path``, readable and writable by its owner only (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file of this name keeps its mode through O_CREAT
        os.write(fd, json.dumps(content).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def endpoint(marker: Path) -> tuple[int, str]:
    """The port and token a running sink wrote to ``marker`` (``sink.json``)."""
    body = json.loads(marker.read_text())
    return int(body["port"]), str(body.get("token", ""))

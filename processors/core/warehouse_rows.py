"""Reading a run's warehouse by SQL: the rows protocol, its two transports, stored images.

ClickHouse stores every image with its pixels; several parts read them back: a resumed run
(:mod:`processors.resume_log`), a replay's cold tier (:mod:`processors.replay_cold`), the
detector localizing a candidate that a revision added (it never had the pixels in a score).
:class:`SqlRows` is what they need: a SELECT answered as rows. :class:`SinkSql` asks a local
run's sink over its loopback endpoint (the sink owns the chdb path; one OS process may hold
it), :class:`ClickHouseRows` a server (or a chdb folder no other process holds) by DSN;
:func:`warehouse` picks the one a worker's settings call for. :func:`stored_images` reads
images by id, a page at a time (bounded memory).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

from processors.core.config import Settings
from processors.core.exceptions import SkyloopError
from processors.core.query_token import TOKEN_HEADER, endpoint
from processors.core.records import ImageRecord

__all__ = [
    "IMAGE_COLUMNS",
    "ClickHouseRows",
    "SinkSql",
    "SqlRows",
    "image_from_row",
    "stored_images",
    "warehouse",
]

IMAGE_COLUMNS = (
    "image_id, source, survey, ra, dec, observed_at, fetched_at, toString(format) AS format, "
    "width, height, bands, base64Encode(pixels) AS pixels, uri, provenance, truth_is_anomaly, "
    "truth_kind, truth_segment, truth_boxes"
)
"""The ``images`` columns :func:`image_from_row` reads (pixels as base64, for JSON)."""
_PAGE = 256
_LIST_PAGE = 100_000


class SqlRows(Protocol):
    """Anything that answers a SELECT with its rows as dicts (the sink's endpoint, a client)."""

    def rows(self, sql: str) -> list[dict[str, Any]]: ...


class SinkSql:
    """SQL over the run's ClickHouse through the live sink's endpoint (``<run>/sink.json``).

    Never opens the chdb files itself: one OS process may hold a chdb path, and the sink does.
    The endpoint bounds each answer (200,000 rows), so long lists are read in pages
    (:meth:`pages`).
    """

    def __init__(
        self, run_dir: Path, timeout_s: float = 120.0, request_timeout_s: float = 120.0
    ) -> None:
        self.run_dir = run_dir
        self.timeout_s = timeout_s  # retrying while the sink is not serving; 0: one try
        self.request_timeout_s = request_timeout_s  # one answer

    def rows(self, sql: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                port, token = endpoint(self.run_dir / "sink.json")
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/sql",
                    data=sql.encode(),
                    method="POST",
                    headers={TOKEN_HEADER: token},
                )
                with urllib.request.urlopen(request, timeout=self.request_timeout_s) as response:
                    body = json.loads(response.read())
                return [dict(zip(body["columns"], row, strict=True)) for row in body["rows"]]
            except urllib.error.HTTPError as exc:
                raise SkyloopError(f"ClickHouse refused a query: {exc.read()!r}") from None
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline:
                    raise SkyloopError(
                        f"the sink of {self.run_dir} did not answer SQL within "
                        f"{self.timeout_s:.0f}s"
                    ) from None
                time.sleep(0.3)

    def pages(self, select: str, where: str = "1") -> Iterator[dict[str, Any]]:
        """Rows of ``SELECT {select} FROM images WHERE {where}``, by ``image_id`` in pages."""
        last = ""
        while True:
            rows = self.rows(
                f"SELECT {select} FROM images WHERE ({where}) AND image_id > '{last}' "
                f"ORDER BY image_id LIMIT {_LIST_PAGE}"
            )
            yield from rows
            if len(rows) < _LIST_PAGE:
                return
            last = rows[-1]["image_id"]


class ClickHouseRows:
    """:class:`SqlRows` over a ClickHouse client of ``dsn`` (a server, or a chdb folder no
    other process holds); ``options``: its credentials and TLS files
    (:func:`~processors.core.clickhouse.client_options`)."""

    def __init__(self, dsn: str, **options: Any) -> None:
        from processors.core.clickhouse import connect

        self._client = connect(dsn, **options)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        result = self._client.query(sql)
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def close(self) -> None:
        self._client.close()


def warehouse(settings: Settings) -> SqlRows:
    """The warehouse of a worker's settings: its local run's sink when the DSN is the
    embedded engine (``chdb://``: the sink holds it), else a client of the DSN."""
    from processors.core.clickhouse import client_options

    dsn = settings.resolved_clickhouse_dsn
    if dsn.startswith("chdb://"):
        return SinkSql(settings.data_dir, timeout_s=10.0)
    return ClickHouseRows(dsn, **client_options(settings))


def _utc(text: str | datetime) -> datetime:
    at = text if isinstance(text, datetime) else datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


_BOX_FIELDS = ("label", "x1", "y1", "x2", "y2")


def _truth_box(value: Any) -> dict[str, Any]:
    """A stored truth box, ``(label, x1, y1, x2, y2)`` (a named tuple from a client, a list
    from the sink's JSON), as a Box: a truth box's confidence is 1 (migration 005)."""
    fields = [value[k] for k in _BOX_FIELDS] if isinstance(value, dict) else list(value)
    return {"confidence": 1.0, **dict(zip(_BOX_FIELDS, fields, strict=True))}


def image_from_row(r: dict[str, Any]) -> ImageRecord:
    truth = None
    if r["truth_is_anomaly"] is not None:
        boxes = [_truth_box(b) for b in r.get("truth_boxes") or []]
        truth = {
            "is_anomaly": bool(r["truth_is_anomaly"]),
            "kind": r["truth_kind"],
            "segment": r["truth_segment"],
            "boxes": boxes,
        }
    return cast(
        ImageRecord,
        {
            "image_id": r["image_id"],
            "source": r["source"],
            "survey": r["survey"],
            "ra": r["ra"],
            "dec": r["dec"],
            "observed_at": _utc(r["observed_at"]),
            "fetched_at": _utc(r["fetched_at"]),
            "format": r["format"],
            "pixels": base64.b64decode(r["pixels"]) if r["pixels"] else None,
            "uri": r["uri"],
            "width": int(r["width"]),
            "height": int(r["height"]),
            "bands": int(r["bands"]),
            "provenance": dict(r["provenance"] or {}),
            "truth": truth,
        },
    )


def stored_images(sql: SqlRows, ids: list[str]) -> Iterator[ImageRecord]:
    """The stored images of ``ids``, in that order, a page at a time (bounded memory)."""
    for start in range(0, len(ids), _PAGE):
        page = ids[start : start + _PAGE]
        quoted = ",".join(f"'{i}'" for i in page if all(c in "0123456789abcdef" for c in i))
        rows = sql.rows(f"SELECT {IMAGE_COLUMNS} FROM images FINAL WHERE image_id IN ({quoted})")
        by_id = {r["image_id"]: r for r in rows}
        for image_id in page:
            if image_id in by_id:
                yield image_from_row(by_id[image_id])

"""The report's Markdown conventions, for its section modules.

The one place that renders report values as Markdown: every section module (daily, overview,
candidates, corrections, learning, crossmatches) uses these helpers, none keeps its own copy.

A missing value shows as "—", a pipe inside a cell is escaped, times are UTC
(``YYYY-MM-DD HH:MM:SS``) and floats have a fixed number of digits, so the same rows always
render to the same text.

>>> table(["a", "b"], [(1, None), ("x|y", 0.5)])
['| a | b |', '|---|---|', '| 1 | — |', '| x\\\\|y | 0.5 |']
>>> number(float("nan")), number(0.12345), number(3, 1)
(None, '0.123', '3.0')
>>> formatted(0.000123456, ".3g"), percent(0.1234), percent(None)
('0.000123', '12.3%', None)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["cell", "clip", "formatted", "number", "percent", "short", "table", "utc", "when"]


def cell(value: Any) -> str:
    """One table cell: "—" for None or an empty string, pipes and newlines neutralised."""
    text = "—" if value is None or value == "" else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table: header, rule, one line per row."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def formatted(value: float | None, spec: str) -> str | None:
    """``value`` formatted with the format ``spec``; None for None and non-finite values."""
    if value is None or not math.isfinite(float(value)):
        return None
    return format(float(value), spec)


def number(value: float | None, digits: int = 3) -> str | None:
    """``value`` with ``digits`` decimals; None for None and non-finite values."""
    return formatted(value, f".{digits}f")


def percent(value: float | None) -> str | None:
    """A fraction as a percentage with one decimal (``0.1234`` -> ``12.3%``); None as for
    :func:`number`."""
    text = number(None if value is None else 100.0 * value, 1)
    return None if text is None else f"{text}%"


def utc(value: datetime) -> datetime:
    """An aware UTC datetime (clickhouse-connect returns naive ones in the server's zone, UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def when(value: datetime | None) -> str | None:
    """``YYYY-MM-DD HH:MM:SS`` in UTC."""
    return None if value is None else utc(value).strftime("%Y-%m-%d %H:%M:%S")


def clip(text: str, limit: int = 160) -> str:
    """``text`` on one line, cut with "…" past ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short(identifier: str | None, length: int = 12) -> str | None:
    """A content hash or id cut to ``length`` characters, as code."""
    return None if not identifier else f"`{identifier[:length]}`"

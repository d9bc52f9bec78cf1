"""SQL fragments shared by the report's query modules."""

from __future__ import annotations

__all__ = ["in_window"]


def in_window(column: str) -> str:
    """``column`` in the half-open window ``[start, end)``, as server-side parameters.

    >>> in_window("at")
    "at >= {start:DateTime64(3, 'UTC')} AND at < {end:DateTime64(3, 'UTC')}"
    """
    return f"{column} >= {{start:DateTime64(3, 'UTC')}} AND {column} < {{end:DateTime64(3, 'UTC')}}"

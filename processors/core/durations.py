"""Durations as people write them on a command line: ``90s``, ``30m``, ``2h``, ``1h30m``."""

from __future__ import annotations

import re

from processors.core.exceptions import ConfigError

__all__ = ["duration_seconds"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_seconds(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1h30m`` → seconds; ConfigError otherwise.

    A bare number is seconds, and only alone (``1h30`` is refused: 30 what?).

    >>> duration_seconds("1h30m"), duration_seconds("45"), duration_seconds("2.5m")
    (5400.0, 45.0, 150.0)
    """
    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?[smhd]?\s*)+)", text)
    tokens = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text) if parts else []
    if not tokens or (len(tokens) > 1 and any(unit == "" for _, unit in tokens)):
        raise ConfigError(f"{text!r}: accepted durations look like 90s, 30m, 2h or 1h30m")
    return sum(float(number) * _UNITS[unit or "s"] for number, unit in tokens)

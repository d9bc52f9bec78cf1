"""The ``?key=value&...`` options of a source spec: splitting and typed values.

A ``?`` starts the options only when everything after the last ``?`` is ``key=value`` pairs, so
a path or glob may itself use ``?`` as a wildcard. Every error is a :class:`ConfigError` naming
the key and the accepted values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from processors.core.exceptions import ConfigError

__all__ = [
    "OptionParser",
    "flag",
    "integer",
    "number",
    "positive",
    "split_options",
    "text",
    "typed_options",
]

OptionParser = Callable[[str, str], Any]
_OPTIONS = re.compile(r"^[A-Za-z_]+=[^&]*(&[A-Za-z_]+=[^&]*)*$")


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    """``'a/b?x=1&y=2'`` -> ``('a/b', {'x': '1', 'y': '2'})``; values are percent-decoded.

    >>> split_options("dir:cut?s/*.png?watch=1")
    ('dir:cut?s/*.png', {'watch': '1'})
    """
    target, sep, query = spec.rpartition("?")
    if not sep or not _OPTIONS.match(query):
        return spec, {}
    options: dict[str, str] = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key in options:
            raise ConfigError(f"source option {key!r} is given twice in {spec!r}")
        options[key] = unquote(value)
    return target, options


def typed_options(
    kind: str, options: Mapping[str, str], parsers: Mapping[str, OptionParser]
) -> dict[str, Any]:
    """Each option parsed by its parser; an unknown key names the accepted ones."""
    out: dict[str, Any] = {}
    for key, raw in options.items():
        if key not in parsers:
            raise ConfigError(
                f"source {kind!r}: unknown option {key!r}; accepted keys are "
                f"{', '.join(sorted(parsers))}"
            )
        out[key] = parsers[key](key, raw)
    return out


def number(low: float | None = None, high: float | None = None, *, kind: type = float) -> Any:
    def parse(key: str, raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            value = None
        ok = value is not None and value == value
        ok = ok and (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            span = f" in [{low}, {high}]" if low is not None and high is not None else ""
            span = span or (f" >= {low}" if low is not None else "")
            raise ConfigError(f"{key}={raw!r}: accepted values are {kind.__name__}s{span}")
        return value

    return parse


def integer(low: int | None = None, high: int | None = None) -> OptionParser:
    return number(low, high, kind=int)


def positive(key: str, raw: str) -> float:
    value = number(0.0)(key, raw)
    if value == 0:
        raise ConfigError(f"{key}={raw!r}: accepted values are numbers > 0")
    return float(value)


def flag(key: str, raw: str) -> bool:
    value = raw.lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key}={raw!r}: accepted values are true, false")
    return value in ("true", "1", "yes")


def text(key: str, raw: str) -> str:
    if not raw:
        raise ConfigError(f"{key}: empty; accepted values are non-empty text")
    return raw

"""The one parser of a source spec's ``?key=value&...`` options: splitting and typed values.

Every family reads its options here: :func:`split_options` splits them off, then
:func:`typed_options` parses each with the family's table of parsers (``{key: parser}``, a
parser being ``(key, raw) -> value`` built from :func:`number`, :func:`integer`,
:func:`positive`, :func:`flag`, :func:`text`, :func:`choice` or :func:`verbatim`).

Invariants: a ``?`` starts the options only when everything after the last ``?`` is
``key=value`` pairs (keys of letters and ``_``), so a path or glob may itself use ``?`` as a
wildcard; values are percent-decoded and a ``+`` stays a ``+``; a key given twice is an error;
every error is a :class:`ConfigError` naming the key and the accepted values (or keys).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from processors.core.exceptions import ConfigError

__all__ = [
    "OptionParser",
    "choice",
    "flag",
    "integer",
    "number",
    "positive",
    "split_options",
    "text",
    "typed_options",
    "verbatim",
]

OptionParser = Callable[[str, str], Any]
_OPTIONS = re.compile(r"^[A-Za-z_]+=[^&]*(&[A-Za-z_]+=[^&]*)*$")


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    """``'a/b?x=1&y=2'`` -> ``('a/b', {'x': '1', 'y': '2'})``; values are percent-decoded.

    >>> split_options("dir:cut?s/*.png?watch=1")
    ('dir:cut?s/*.png', {'watch': '1'})
    >>> split_options("synthetic?drifts=60:+space")
    ('synthetic', {'drifts': '60:+space'})
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
    kind: str,
    options: Mapping[str, str],
    parsers: Mapping[str, OptionParser],
    *,
    unknown_for: str | None = None,
) -> dict[str, Any]:
    """Each option parsed by its parser; an unknown key names the accepted ones.

    The accepted keys are listed sorted, or, with ``unknown_for`` (e.g. ``'a ZTF file
    source'``, for a family whose keys depend on the target), in the table's order.
    """
    out: dict[str, Any] = {}
    for key, raw in options.items():
        if key not in parsers:
            if unknown_for is not None:
                raise ConfigError(
                    f"source option {key!r} is unknown for {unknown_for}; "
                    f"accepted keys are {', '.join(parsers)}"
                )
            raise ConfigError(
                f"source {kind!r}: unknown option {key!r}; accepted keys are "
                f"{', '.join(sorted(parsers))}"
            )
        out[key] = parsers[key](key, raw)
    return out


def number(low: float | None = None, high: float | None = None, *, kind: type = float) -> Any:
    """A parser of ``kind`` (float or int) values within ``[low, high]`` (None: unbounded).

    >>> number(0.0, 1.0)("min_rb", "0.5")
    0.5
    """

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
    """A parser of integers within ``[low, high]`` (None: unbounded)."""
    return number(low, high, kind=int)


def positive(key: str, raw: str) -> float:
    """A number > 0."""
    value = number(0.0)(key, raw)
    if value == 0:
        raise ConfigError(f"{key}={raw!r}: accepted values are numbers > 0")
    return float(value)


def flag(key: str, raw: str) -> bool:
    """``true``/``1``/``yes`` or ``false``/``0``/``no``, in any case."""
    value = raw.lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{key}={raw!r}: accepted values are true, false")
    return value in ("true", "1", "yes")


def text(key: str, raw: str) -> str:
    """Non-empty text."""
    if not raw:
        raise ConfigError(f"{key}: empty; accepted values are non-empty text")
    return raw


def verbatim(key: str, raw: str) -> str:
    """Any text, the empty one included (the source checks it)."""
    return raw


def choice(*accepted: str) -> OptionParser:
    """A parser accepting exactly one of ``accepted``.

    >>> choice("on_next", "manual")("commit", "manual")
    'manual'
    """

    def parse(key: str, raw: str) -> str:
        if raw not in accepted:
            raise ConfigError(f"{key}={raw!r}: accepted values are {', '.join(accepted)}")
        return raw

    return parse

"""Grafana's query expansion for the ClickHouse datasource, for running dashboard SQL on chdb.

Grafana first replaces template variables (``$source``, ``${source}``, ``${source:singlequote}``;
``$__all`` means every value), then the plugin (grafana-clickhouse-datasource, pkg/macros)
replaces its macros: ``$__timeFilter(col)`` → ``col >= toDateTime(<from s>) AND col <=
toDateTime(<to s>)``, ``$__timeFilter_ms`` with ``fromUnixTimestamp64Milli(<ms>)``,
``$__fromTime``/``$__toTime`` (and ``_ms``), ``$__dateFilter(col)`` with ``toDate('YYYY-MM-DD')``,
``$__timeInterval(col)`` → ``toStartOfInterval(toDateTime(col), INTERVAL <s> second)``,
``$__interval_s`` → the interval in whole seconds (at least 1). An unknown macro is an error,
as it would be in Grafana.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["GrafanaRange", "expand", "expand_macros", "expand_variables"]

_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)")
_MACRO = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")


@dataclass(frozen=True)
class GrafanaRange:
    start: datetime
    end: datetime
    interval: timedelta


def expand_variables(text: str, variables: Mapping[str, Sequence[str]]) -> str:
    """Template variables replaced the way Grafana formats them for a SQL datasource."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        fmt = match.group(2)
        if name not in variables:
            raise KeyError(f"template variable ${name} is not defined")
        values = list(variables[name])
        if fmt == "singlequote":
            return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
        if fmt in (None, "raw", "csv"):
            return ",".join(values)
        if fmt == "regex":
            return "(" + "|".join(re.escape(v) for v in values) + ")"
        raise ValueError(f"format {fmt!r} of ${name} not supported here")

    return _VARIABLE.sub(replace, text)


def expand_macros(sql: str, when: GrafanaRange) -> str:
    """The plugin's macros replaced (see the module docstring)."""
    start_s, end_s = int(when.start.timestamp()), int(when.end.timestamp())
    start_ms, end_ms = int(when.start.timestamp() * 1000), int(when.end.timestamp() * 1000)
    seconds = max(int(when.interval.total_seconds()), 1)

    def replace(match: re.Match[str]) -> str:
        name, arg = match.group(1), match.group(2)
        col = (arg or "").strip()
        simple = {
            "fromTime": f"toDateTime({start_s})",
            "toTime": f"toDateTime({end_s})",
            "fromTime_ms": f"fromUnixTimestamp64Milli({start_ms})",
            "toTime_ms": f"fromUnixTimestamp64Milli({end_ms})",
            "interval_s": str(seconds),
        }
        if name in simple:
            return simple[name] + ("" if arg is None else f"({arg})")
        if arg is None:
            raise ValueError(f"macro $__{name} needs an argument")
        if name == "timeFilter":
            return f"{col} >= toDateTime({start_s}) AND {col} <= toDateTime({end_s})"
        if name == "timeFilter_ms":
            return (
                f"{col} >= fromUnixTimestamp64Milli({start_ms}) AND "
                f"{col} <= fromUnixTimestamp64Milli({end_ms})"
            )
        if name == "dateFilter":
            return (
                f"{col} >= toDate('{when.start:%Y-%m-%d}') AND "
                f"{col} <= toDate('{when.end:%Y-%m-%d}')"
            )
        if name == "timeInterval":
            return f"toStartOfInterval(toDateTime({col}), INTERVAL {seconds} second)"
        if name == "timeInterval_ms":
            ms = max(int(when.interval.total_seconds() * 1000), 1)
            return f"toStartOfInterval(toDateTime64({col}, 3), INTERVAL {ms} millisecond)"
        raise ValueError(f"unknown macro $__{name}")

    return _MACRO.sub(replace, sql)


def expand(sql: str, when: GrafanaRange, variables: Mapping[str, Sequence[str]]) -> str:
    """Variables first (Grafana), then macros (the plugin)."""
    return expand_macros(expand_variables(sql, variables), when)

"""Commands that read a run's ClickHouse: ``sql``, ``events``, ``models``, ``top``, ``report``.

Each answers from the latest run (or ``--run``) through :func:`processors.sink.query.query`:
the live sink while it runs, else the run's files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from processors.cli.common import add_common, run_dir, settings
from processors.core.tabular import format_table
from processors.sink.query import events_query, query

__all__ = ["add_parsers", "cmd_events", "cmd_models", "cmd_report", "cmd_sql", "cmd_top"]


def cmd_sql(args: argparse.Namespace) -> int:
    columns, rows = query(run_dir(args), args.query)
    sys.stdout.write(format_table(columns, rows, args.format))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    sql = events_query(args.type, args.subject, args.since)
    columns, rows = query(run_dir(args), sql)
    sys.stdout.write(format_table(columns, rows, args.format))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    """Refresh per-source rates every ``--interval`` s (``--count`` times; 0 = until Ctrl-C)."""
    from processors.top import TOTALS_SQL, rates, render, totals

    folder = run_dir(args)
    previous, then = totals(query(folder, TOTALS_SQL)[1]), time.monotonic()
    shown = 0
    try:
        while args.count == 0 or shown < args.count:
            time.sleep(args.interval)
            current, now = totals(query(folder, TOTALS_SQL)[1]), time.monotonic()
            screen = render(current, rates(previous, current, now - then))
            clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
            print(f"{clear}skyloop top: {folder} (every {args.interval:g} s)\n{screen}")
            sys.stdout.flush()
            previous, then, shown = current, now, shown + 1
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The model registry: every registered version, its role, gate, metrics and lineage."""
    from processors.core.registry import registry_view

    sql = (
        "SELECT event_id, type, subject, at, issued_by, params, evidence, caused_by "
        "FROM control_events FINAL WHERE type LIKE 'model.%' ORDER BY kafka_offset"
    )
    _columns, rows = query(run_dir(args), sql)
    events = [
        {
            "event_id": r[0],
            "type": r[1],
            "subject": r[2],
            "at": _as_time(r[3]),
            "issued_by": r[4],
            "params": json.loads(r[5]) if r[5] else {},
            "evidence": dict(r[6] or {}),
            "caused_by": list(r[7] or []),
        }
        for r in rows
    ]
    view = registry_view(events)  # type: ignore[arg-type]
    columns = ["version", "kind", "role", "gate", "parent", "registered_at", "metrics"]
    table = [
        [
            row.version,
            row.kind,
            row.role,
            row.gate,
            row.parent or "-",
            row.registered_at,
            " ".join(f"{k}={v:.4g}" for k, v in sorted(row.metrics.items())) or "-",
        ]
        for row in view
    ]
    if args.format == "json":
        print(json.dumps([row.as_dict() for row in view], indent=1))
    else:
        sys.stdout.write(format_table(columns, table, args.format))
    return 0


def _as_time(value: Any) -> Any:
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_report(args: argparse.Namespace) -> int:
    from processors.report.run_report import write_run_report

    path, _counts = write_run_report(run_dir(args), settings(args))
    print(f"report: {path}")
    return 0


def add_parsers(sub: Any) -> None:
    """The ``sql``, ``events``, ``report``, ``models`` and ``top`` subcommands."""
    for name, func, helptext in (
        ("sql", cmd_sql, "answer read-only SQL from the run's ClickHouse (writes refused)"),
        ("events", cmd_events, "print the control-event audit trail"),
        ("report", cmd_report, "write the Markdown report again"),
        ("models", cmd_models, "list the model registry: roles, gates, metrics, lineage"),
        ("top", cmd_top, "live per-source rates of a run (images, scores, flags, dead letters)"),
    ):
        p = sub.add_parser(name, help=helptext)
        add_common(p)
        p.add_argument("--run", type=Path, help="a run folder (default: the latest run)")
        if name == "sql":
            p.add_argument("query")
        if name in ("sql", "events", "models"):
            p.add_argument("--format", choices=("table", "csv", "json", "tsv"), default="table")
        if name == "top":
            p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
            p.add_argument("--count", type=int, default=0, help="refreshes (0: until Ctrl-C)")
        if name == "events":
            p.add_argument("--type", action="append", help="only this event type (repeatable)")
            p.add_argument("--subject", help="only events about this subject (e.g. a source)")
            p.add_argument("--since", help="only events at or after this ISO 8601 time (UTC)")
        p.set_defaults(func=func)

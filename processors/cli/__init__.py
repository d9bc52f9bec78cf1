"""The ``skyloop`` command: run, worker, topology, init, replay, control, sql, events, models,
top, report, tail.

Exit codes: 0 success, 1 a pipeline or data error (message on stderr), 2 bad usage or config.
One module per family of commands, each adding its own subparsers: :mod:`.pipeline` (run,
worker, init, topology), :mod:`.replay`, :mod:`.control`, :mod:`.data` (sql, events, models,
top, report), :mod:`.topics` (tail). Importing this package is cheap: each command imports
what it needs when it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from processors.cli import control, data, pipeline, replay, topics
from processors.core.durations import duration_seconds
from processors.core.exceptions import ConfigError, SkyloopError
from processors.topology import worker_names

__all__ = ["DESCRIPTION", "WORKER_NAMES", "build_parser", "duration_seconds", "main"]

DESCRIPTION = """The ``skyloop`` command: run, worker, topology, init, replay, control, sql,
events, models, top, report.

Exit codes: 0 success, 1 a pipeline or data error (message on stderr), 2 bad usage or config.
"""

WORKER_NAMES = worker_names()
"""Every worker's name (``skyloop worker`` also takes former names: ``stats``)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyloop", description=DESCRIPTION)
    parser.add_argument("--log-level", default=os.environ.get("SKYLOOP_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)
    pipeline.add_parsers(sub)
    replay.add_parsers(sub)
    control.add_parsers(sub)
    data.add_parsers(sub)
    topics.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # OpenMP threads (torch's) sleep when idle instead of spinning: a spinning model thread
    # burns a core while the scorer decodes or waits, a core the broker, ingest and sink need
    # (measured: the scorer's CPU per image -19 %, images/s end to end +10 %, raw model speed
    # unchanged). Set before torch is imported; an explicit OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"skyloop: {exc}", file=sys.stderr)
        return 2
    except SkyloopError as exc:
        print(f"skyloop: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nskyloop: interrupted; processors stopped", file=sys.stderr)
        return 130

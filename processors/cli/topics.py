"""``skyloop tail``: any topic's records as JSON lines (what Kafka's console tools cannot read).

Against the running local pipeline (its ``stack.json``), or any Kafka when
``SKYLOOP_BOOTSTRAP_SERVERS`` is set. What a line holds and why a tail never disturbs the
pipeline: :mod:`processors.core.tail`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from processors.cli.common import add_common, live_bootstrap, settings
from processors.core.records import TOPICS

__all__ = ["add_parsers", "cmd_tail"]


def cmd_tail(args: argparse.Namespace) -> int:
    from processors.core.tail import tail, tail_start

    start = tail_start(args.start)
    resolved = settings(args)
    if resolved.kafka.bootstrap_servers is not None:
        bootstrap = resolved.kafka.bootstrap_servers
    else:
        bootstrap, prefix = live_bootstrap(args)
        resolved = resolved.model_copy(update={"topic_prefix": prefix})

    def write(line: str) -> None:
        sys.stdout.write(line)
        sys.stdout.flush()

    try:
        printed = tail(
            resolved,
            bootstrap,
            args.topic,
            start,
            count=args.count or None,
            key=args.key,
            idle_s=args.idle,
            write=write,
        )
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `skyloop tail ... | head`
        return 0
    print(f"skyloop tail: {printed} record(s) of {args.topic}", file=sys.stderr)
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``tail``."""
    p = sub.add_parser(
        "tail",
        help="print a topic's records as JSON lines (pixels and embeddings summarised)",
    )
    p.add_argument("topic", choices=sorted(TOPICS), help="topic base name")
    p.add_argument(
        "--from",
        dest="start",
        default="beginning",
        help="beginning (default), end (only new records) or an ISO 8601 time",
    )
    p.add_argument("--count", type=int, default=0, help="stop after N records (0: no limit)")
    p.add_argument("--key", help="only records with this key (an image id, a source, ...)")
    p.add_argument(
        "--idle",
        type=float,
        default=3.0,
        help="stop after this many seconds without a record (default 3; with --from end, wait)",
    )
    p.add_argument("--run", type=Path, help="a run folder (default: the latest run)")
    add_common(p)
    p.set_defaults(func=cmd_tail)

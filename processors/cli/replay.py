"""``skyloop replay``: rescore ``images.raw`` with a model version, or rebuild ClickHouse."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Literal

from processors.cli.common import add_common, live_bootstrap, run_dir, settings, utc
from processors.core.exceptions import ConfigError

__all__ = ["add_parsers", "cmd_replay"]


def cmd_replay(args: argparse.Namespace) -> int:
    from processors.replay import ReplaySelection, run_replay

    resolved = settings(args)
    mode: Literal["rescore", "rebuild"] = "rebuild" if args.rebuild_clickhouse else "rescore"
    if mode == "rebuild" and (args.model or args.since or args.until or args.source):
        raise ConfigError(
            "--rebuild-clickhouse replays every topic whole: no --model, --since, --until, --source"
        )
    selection = ReplaySelection(
        since=utc(args.since, "--since") if args.since else None,
        until=utc(args.until, "--until") if args.until else None,
        sources=frozenset(args.source) if args.source else None,
    )
    cold: Any = None
    if resolved.kafka.bootstrap_servers is not None:
        bootstrap = resolved.kafka.bootstrap_servers
        if mode == "rescore" and not args.hot_only:
            from processors.core.clickhouse import client_options
            from processors.core.warehouse_rows import ClickHouseRows

            # a deployment's ClickHouse: its credentials and TLS files, as the sink's
            cold = ClickHouseRows(resolved.resolved_clickhouse_dsn, **client_options(resolved))
    else:
        bootstrap, prefix = live_bootstrap(args)
        resolved = resolved.model_copy(update={"topic_prefix": prefix})
        if mode == "rescore" and not args.hot_only:
            from processors.core.warehouse_rows import SinkSql

            cold = SinkSql(run_dir(args))  # the live sink owns the run's chdb
    name = args.name or (
        f"rebuild-{int(time.time())}" if mode == "rebuild" else f"rescore-{int(time.time())}"
    )
    summary = run_replay(
        resolved,
        bootstrap,
        mode,
        name=name,
        selection=selection,
        model=args.model,
        idle_s=args.idle,
        truncate=args.truncate,
        cold=cold,
    )
    print(
        f"replay {summary.mode} done in {summary.seconds:.1f}s: {summary.replayed} records "
        f"replayed ({summary.per_second:.0f}/s), {summary.skipped} skipped, "
        f"{summary.outputs} outputs; group {summary.group}"
        + (f"; {summary.cold} of them from ClickHouse (older than the hot log)" if cold else "")
        + (f"; model {summary.model_version}" if summary.model_version else "")
    )
    return 0


def add_parsers(sub: Any) -> None:
    """The ``replay`` subcommand."""
    replay = sub.add_parser(
        "replay",
        help="rescore images.raw with a model version, or rebuild ClickHouse from the topics",
        description=(
            "Reprocess what the topics hold now, under a consumer group of its own (live "
            "consumers are not disturbed); idempotent. Against SKYLOOP_BOOTSTRAP_SERVERS, or "
            "the latest running `skyloop run`."
        ),
    )
    add_common(replay)
    replay.add_argument("--run", type=Path, help="a run folder (default: the latest run)")
    replay.add_argument(
        "--model", help="model version to score with (default: the production one; see models)"
    )
    replay.add_argument("--since", help="only images observed at or after this ISO 8601 time")
    replay.add_argument("--until", help="only images observed before this ISO 8601 time")
    replay.add_argument("--source", action="append", help="only this source (repeatable)")
    replay.add_argument(
        "--hot-only",
        action="store_true",
        help=(
            "rescore only what the hot log holds; by default the selected images ClickHouse "
            "stored that the hot log no longer holds are rescored too (the cold tier)"
        ),
    )
    replay.add_argument(
        "--rebuild-clickhouse",
        action="store_true",
        help="write every topic into the ClickHouse tables instead of rescoring",
    )
    replay.add_argument(
        "--truncate", action="store_true", help="with --rebuild-clickhouse: empty the tables first"
    )
    replay.add_argument(
        "--name",
        help="replay name (its group is <group_prefix>.replay.NAME); the same name resumes",
    )
    replay.add_argument(
        "--idle",
        type=float,
        default=10.0,
        help="done after this many seconds without a record from before the start (default 10)",
    )
    replay.set_defaults(func=cmd_replay)

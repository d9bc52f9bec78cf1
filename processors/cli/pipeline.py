"""Commands that start or describe the pipeline: ``run``, ``worker``, ``init``, ``topology``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from processors.cli.common import add_common, settings
from processors.core.durations import duration_seconds
from processors.core.exceptions import ConfigError, SkyloopError
from processors.ingest.worker import DEFAULT_SOURCES
from processors.topology import render, resolve, worker_names

__all__ = ["DEFAULT_RUN_IMAGES", "add_parsers", "cmd_init", "cmd_run", "cmd_topology", "cmd_worker"]

DEFAULT_RUN_IMAGES = 500


# -- run -------------------------------------------------------------------------------------
def _run_images(
    requested: int | None, endless: list[str], duration_s: float | None = None
) -> int | None:
    """Items ``skyloop run`` ingests: N, or None for "until the sources end or the duration
    passes" (finite sources, or any with ``--duration``)."""
    if requested is not None and requested < 0:
        raise ConfigError(f"--images={requested}: accepted values are integers >= 0")
    if requested:
        return requested
    if not endless or duration_s is not None:
        return None
    if requested == 0:
        raise ConfigError(
            "--images 0 ingests until the sources end, but these sources never end: "
            f"{', '.join(endless)}; give --images N"
        )
    return DEFAULT_RUN_IMAGES


def cmd_run(args: argparse.Namespace) -> int:
    from processors.ingest.sources import source_from_spec
    from processors.ingest.sources.base import is_endless
    from processors.local import run_local

    if args.resume:
        return _resume(args)
    resolved = settings(args)
    sources = args.source or DEFAULT_SOURCES
    # fail fast on bad specs, before anything starts
    endless = [spec for spec in sources if is_endless(source_from_spec(spec))]
    duration_s = duration_seconds(args.duration) if args.duration else None
    images = _run_images(args.images, endless, duration_s)
    timeout_s = args.timeout if args.timeout is not None else 3600.0 + (duration_s or 0.0)
    result = run_local(resolved, sources, images, duration_s=duration_s, timeout_s=timeout_s)
    return _summary(result)


def _resume(args: argparse.Namespace) -> int:
    """``skyloop run --resume``: continue the newest unfinished run with its own arguments."""
    from processors.local import run_local
    from processors.resume import RunArgs, unfinished_run

    given = [f for f in ("source", "images", "duration") if getattr(args, f) is not None]
    if given:
        raise ConfigError(
            f"--resume continues a run with the arguments it started with; drop "
            f"{', '.join('--' + f for f in given)}"
        )
    resolved = settings(args)
    folder = unfinished_run(resolved.data_dir)
    run_args = RunArgs.read(folder)
    if args.reference_size is None and run_args.reference_size is not None:
        args.reference_size = run_args.reference_size
        resolved = settings(args)
    timeout_s = args.timeout if args.timeout is not None else 3600.0 + (run_args.duration_s or 0)
    result = run_local(
        resolved,
        run_args.sources,
        run_args.images,
        duration_s=run_args.duration_s,
        timeout_s=timeout_s,
        resume=folder,
    )
    return _summary(result)


def _summary(result: Any) -> int:
    """Print a finished run's summary; the exit code (130 when interrupted)."""
    from processors.ingest.processor import describe_source

    counts = result.counts
    print(
        f"\nskyloop run finished in {result.seconds:.1f}s "
        f"({counts.get('images', 0) / max(result.ingest_seconds, 1e-9):.1f} images/s end to end)\n"
        f"  images {counts.get('images', 0)}, scored {counts.get('scores', 0)}, "
        f"candidates {counts.get('candidates', 0)}, dead letters {counts.get('dead_letters', 0)}, "
        f"control events {counts.get('control_events', 0)}\n"
        + "".join(
            f"  {describe_source(name, c)}\n"
            for name, c in sorted(result.ingest.get("sources", {}).items())
        )
        + (
            "  restarts: "
            + ", ".join(f"{name} {n}" for name, n in sorted(result.restarts.items()))
            + "\n"
            if result.restarts
            else ""
        )
        + f"  data: {result.run_dir}\n"
        f'  query: skyloop sql "SELECT source, count() FROM scores FINAL GROUP BY source"\n'
        f"report: {result.report_path}"
        + (f"\n{result.ledger.line()}" if result.ledger is not None else "")
    )
    if result.ledger is not None and not result.ledger.balanced:
        print("skyloop: the ledger does not balance (see its last line)", file=sys.stderr)
        return 1
    if result.interrupted:
        print("skyloop: interrupted; what was ingested went through every stage", file=sys.stderr)
        return 130
    return 0


# -- worker ----------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker of the registry (:mod:`processors.topology`) against the configured
    broker: topics ensured, metrics served (their label bound set) and the pixel limit set
    first, then the worker's own ``run``."""
    from processors.core.imaging import set_max_pixels
    from processors.core.kafka import ensure_topics
    from processors.core.metrics import bound_labels, serve_metrics

    spec = resolve(args.name)
    run = spec.load_run()
    resolved = settings(args)
    set_max_pixels(resolved.ingest.max_pixels)
    if resolved.kafka.bootstrap_servers is None:
        raise ConfigError("skyloop worker needs a broker: set SKYLOOP_BOOTSTRAP_SERVERS")
    ensure_topics(resolved, resolved.kafka.bootstrap_servers)
    bound_labels(resolved.metrics.label_values_max)
    serve_metrics(resolved.metrics.port, resolved.metrics.host)
    return int(run(resolved, args))


# -- init ------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    """Create every topic (with its partition count) and apply the ClickHouse migrations.

    Idempotent: existing topics and applied migrations are left as they are. Retries for
    ``--wait`` seconds while Kafka or ClickHouse do not answer, so a deployment's init job may
    start with them; a bad configuration or a changed migration fails at once.
    """
    from processors.core.clickhouse import client_options, connect
    from processors.core.kafka import ensure_topics
    from processors.sink.migrations import MigrationError, apply_migrations

    resolved = settings(args)
    if resolved.kafka.bootstrap_servers is None:
        raise ConfigError("skyloop init needs a broker: set SKYLOOP_BOOTSTRAP_SERVERS")
    bootstrap = resolved.kafka.bootstrap_servers

    def migrate() -> None:
        client = connect(resolved.resolved_clickhouse_dsn, **client_options(resolved))
        try:
            for name in apply_migrations(client):
                print(f"skyloop init: applied {name}", file=sys.stderr)
        finally:
            client.close()

    deadline = time.monotonic() + args.wait

    def topics() -> None:  # each try within what is left of --wait (at least 3 s, at most 15)
        left = deadline - time.monotonic()
        ensure_topics(resolved, bootstrap, timeout_s=min(max(left, 3.0), 15.0))

    for what, step in (
        ("topics", topics),
        ("migrations", migrate),
    ):
        while True:
            try:
                step()
                break
            except (ConfigError, MigrationError):
                raise
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise SkyloopError(f"init: {what} failed: {exc}") from exc
                print(f"skyloop init: {what} not ready ({exc}); retrying", file=sys.stderr)
                time.sleep(2)
        print(f"skyloop init: {what} ready", file=sys.stderr)
    return 0


# -- topology --------------------------------------------------------------------------------
def cmd_topology(args: argparse.Namespace) -> int:
    """Print the workers: what each consumes, produces, keeps, folds and emits."""
    sys.stdout.write(render(args.format))
    return 0


# -- parsers ---------------------------------------------------------------------------------
def add_parsers(sub: Any) -> None:
    """The ``run``, ``worker``, ``init`` and ``topology`` subcommands."""
    run = sub.add_parser("run", help="run the pipeline on the embedded local stack")
    add_common(run)
    run.add_argument(
        "--images",
        type=int,
        default=None,
        help=(
            "items to ingest, images and unreadable items alike (a finite source may end "
            "first); 0 = until the sources end, for finite sources only. Default: until the "
            "sources end when all are finite "
            f"(ztf:DIR), else {DEFAULT_RUN_IMAGES}"
        ),
    )
    run.add_argument(
        "--source",
        action="append",
        help=(
            "image source spec, repeatable: synthetic, hubble (both endless), "
            'ztf:DIR or "ztf:DIR?cutout=triplet&min_rb=0.5" (ZTF alert packets, finite), '
            "ztf:kafka://HOST:PORT/TOPIC?idle_timeout_s=30 (an external alert topic; endless "
            "without idle_timeout_s or max_messages), dir:FOLDER_OR_GLOB[?watch=1] (FITS, PNG, "
            "JPEG, TIFF files), SURVEY:TARGETS.csv[?size=64&base_url=..] with SURVEY one of "
            "sdss, decals, panstarrs, ztf-irsa, hst, galaxyzoo (cutouts of each target, finite; "
            "options in the README). Default: synthetic and hubble"
        ),
    )
    run.add_argument(
        "--reference-size",
        type=int,
        default=None,
        help=(
            "images per (model, source) calibration window (setting reference_size, default "
            "128, minimum 20); a source with fewer images is scored calibrated=false, never a "
            "candidate"
        ),
    )
    run.add_argument(
        "--duration",
        help=(
            "ingest for this long (90s, 30m, 2h, 1h30m), then let every stage finish and "
            "report; with endless sources and no --images it runs until then (or Ctrl-C)"
        ),
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help=(
            "continue the newest unfinished run of --data-dir (one whose processes were all "
            "killed) in its own folder, with its own sources and limits: the broker's log is "
            "rebuilt from ClickHouse, stored images are not ingested or scored again"
        ),
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="give up after this many seconds (default: an hour plus --duration)",
    )
    run.set_defaults(func=cmd_run)

    worker = sub.add_parser("worker", help="run one processor against SKYLOOP_BOOTSTRAP_SERVERS")
    add_common(worker)
    worker.add_argument(
        "name", help=f"the worker: {', '.join(worker_names())} (`skyloop topology` lists them)"
    )
    worker.add_argument(
        "--images", type=int, default=None, help="ingest: stop after N items (default/0: all)"
    )
    worker.add_argument("--source", action="append", help="ingest: source spec (repeatable)")
    worker.add_argument("--duration", help="ingest: stop taking items after this long")
    worker.add_argument(
        "--skip", type=Path, help="ingest: a resumed run's list of stored images, not published"
    )
    worker.set_defaults(func=cmd_worker)

    init = sub.add_parser(
        "init", help="create the topics and apply the ClickHouse migrations (idempotent)"
    )
    add_common(init)
    init.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="retry for this many seconds while Kafka or ClickHouse do not answer yet",
    )
    init.set_defaults(func=cmd_init)

    topology = sub.add_parser(
        "topology",
        help="list the workers: topics consumed and produced, state, control events",
        description=(
            "One row per worker: the topics it consumes (in its consumer group) and produces, "
            "the state it keeps, the control events it folds and those it emits."
        ),
    )
    topology.add_argument("--format", choices=("table", "json"), default="table")
    topology.set_defaults(func=cmd_topology)

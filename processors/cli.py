"""The ``skyloop`` command: run, worker, control, sql, events, report.

Exit codes: 0 success, 1 a pipeline or data error (message on stderr), 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from processors.core.exceptions import ConfigError, SkyloopError

if TYPE_CHECKING:
    from processors.core.records import ControlEventRecord

__all__ = ["duration_seconds", "main"]

DEFAULT_SOURCES = ["synthetic", "hubble"]
WORKER_NAMES = ("ingest", "score", "stats", "detect", "train", "sink")


def _settings(args: argparse.Namespace) -> Any:
    from processors.core.config import load_settings

    return load_settings(
        getattr(args, "config", None),
        data_dir=getattr(args, "data_dir", None),
        reference_size=getattr(args, "reference_size", None),
    )


def _run_dir(args: argparse.Namespace) -> Path:
    from processors.local import latest_run_dir

    settings = _settings(args)
    if getattr(args, "run", None):
        return Path(args.run)
    run_dir = latest_run_dir(settings.data_dir)
    if run_dir is None:
        # A worker-style data dir (skyloop worker sink) keeps chdb directly under it.
        if (settings.data_dir / "clickhouse").is_dir():
            return settings.data_dir
        raise SkyloopError(f"no run found under {settings.data_dir}; run `skyloop run` first")
    return run_dir


# -- run -------------------------------------------------------------------------------------
DEFAULT_RUN_IMAGES = 500


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
    from processors.ingest.base import is_endless
    from processors.ingest.processor import describe_source
    from processors.ingest.sources import source_from_spec
    from processors.local import run_local

    settings = _settings(args)
    sources = args.source or DEFAULT_SOURCES
    # fail fast on bad specs, before anything starts
    endless = [spec for spec in sources if is_endless(source_from_spec(spec))]
    duration_s = duration_seconds(args.duration) if args.duration else None
    images = _run_images(args.images, endless, duration_s)
    timeout_s = args.timeout if args.timeout is not None else 3600.0 + (duration_s or 0.0)
    result = run_local(settings, sources, images, duration_s=duration_s, timeout_s=timeout_s)
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
    )
    if result.interrupted:
        print("skyloop: interrupted; what was ingested went through every stage", file=sys.stderr)
        return 130
    return 0


# -- worker ----------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    from processors.core.kafka import ensure_topics
    from processors.core.metrics import serve_metrics
    from processors.core.runner import Runner, StopSignal

    settings = _settings(args)
    if settings.bootstrap_servers is None:
        raise ConfigError("skyloop worker needs a broker: set SKYLOOP_BOOTSTRAP_SERVERS")
    bootstrap = settings.bootstrap_servers
    ensure_topics(settings, bootstrap)
    serve_metrics(settings.metrics_port, settings.metrics_host)
    progress_dir = settings.progress_dir
    name = args.name
    if name == "ingest":
        from processors.ingest.processor import describe_source, run_ingest
        from processors.ingest.sources import Interleaved, source_from_spec

        stop = StopSignal().install()
        specs = args.source or DEFAULT_SOURCES
        source = Interleaved([source_from_spec(s, stop=stop.event) for s in specs], stop=stop.event)
        summary = run_ingest(
            settings,
            bootstrap,
            source,
            limit=args.images or None,
            duration_s=duration_seconds(args.duration) if args.duration else None,
            stop=stop,
            progress_dir=progress_dir,
        )
        for source_name, source_counts in sorted(summary.sources.items()):
            print(f"ingest: {describe_source(source_name, source_counts)}", file=sys.stderr)
        return 0
    if name == "train":
        from processors.core.progress import ProgressFile
        from processors.train.trainer import Trainer

        stop = StopSignal().install()
        # Training is background work: it takes only cores the scoring path leaves idle. Linux's
        # SCHED_IDLE runs it only then (nice 19 still took 0.4 of a core from a busy run and
        # stalled the scorer's two model threads); the training subprocess inherits it.
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):  # not Linux: the lowest priority instead
            os.nice(19)
        Trainer(settings, bootstrap, ProgressFile(progress_dir, "train")).run(stop.event)
        return 0
    if name == "stats":
        import faust
        from threadpoolctl import threadpool_limits

        from processors.controller.app import build_app
        from processors.core.progress import ProgressFile

        # The controller's maths (calibrations, drift tests) is small and occasional: one BLAS
        # thread, so it never spins cores away from the scorer's model (ood_threads' reason).
        threadpool_limits(limits=settings.ood_threads, user_api="blas")

        progress = ProgressFile(progress_dir, "stats")
        app = build_app(settings, bootstrap, progress)

        @app.on_partitions_assigned.connect
        async def _ready(*_: Any, **__: Any) -> None:
            progress.set("ready", True)
            progress.write(force=True)

        faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
        return 0
    processor: Any
    if name == "score":
        from processors.score.processor import ScoreProcessor

        processor = ScoreProcessor()
    elif name == "detect":
        from processors.detect.processor import DetectProcessor

        processor = DetectProcessor()
    elif name == "sink":
        from processors.sink.processor import SinkProcessor, relax_gc

        relax_gc()
        processor = SinkProcessor()
    else:  # argparse restricts the choices; kept for direct callers
        raise ConfigError(f"unknown worker {name!r}; accepted: {', '.join(WORKER_NAMES)}")
    limits: dict[str, Any] = {}
    if name == "sink":  # ClickHouse wants few large inserts
        limits = {
            "batch_size": settings.sink_batch_size,
            "max_batch_bytes": settings.sink_batch_max_bytes,
            "max_wait_s": settings.sink_batch_max_wait_ms / 1000,
        }
    Runner(
        processor,
        settings,
        bootstrap,
        stop=StopSignal().install(),
        progress_dir=progress_dir,
        **limits,
    ).run()
    return 0


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

    settings = _settings(args)
    if settings.bootstrap_servers is None:
        raise ConfigError("skyloop init needs a broker: set SKYLOOP_BOOTSTRAP_SERVERS")
    bootstrap = settings.bootstrap_servers

    def migrate() -> None:
        client = connect(settings.resolved_clickhouse_dsn, **client_options(settings))
        try:
            for name in apply_migrations(client):
                print(f"skyloop init: applied {name}", file=sys.stderr)
        finally:
            client.close()

    deadline = time.monotonic() + args.wait
    for what, step in (
        ("topics", lambda: ensure_topics(settings, bootstrap)),
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


# -- replay ----------------------------------------------------------------------------------
def _utc(text: str, flag: str) -> Any:
    from datetime import UTC, datetime

    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r}: accepted values are ISO 8601 times, e.g. 2026-12-01T10:00Z"
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)


def cmd_replay(args: argparse.Namespace) -> int:
    from processors.replay import ReplaySelection, run_replay

    settings = _settings(args)
    mode: Literal["rescore", "rebuild"] = "rebuild" if args.rebuild_clickhouse else "rescore"
    if mode == "rebuild" and (args.model or args.since or args.until or args.source):
        raise ConfigError(
            "--rebuild-clickhouse replays every topic whole: no --model, --since, --until, --source"
        )
    selection = ReplaySelection(
        since=_utc(args.since, "--since") if args.since else None,
        until=_utc(args.until, "--until") if args.until else None,
        sources=frozenset(args.source) if args.source else None,
    )
    if settings.bootstrap_servers is not None:
        bootstrap = settings.bootstrap_servers
    else:
        bootstrap, prefix = _live_bootstrap(args)
        settings = settings.model_copy(update={"topic_prefix": prefix})
    name = args.name or (
        f"rebuild-{int(time.time())}" if mode == "rebuild" else f"rescore-{int(time.time())}"
    )
    summary = run_replay(
        settings,
        bootstrap,
        mode,
        name=name,
        selection=selection,
        model=args.model,
        idle_s=args.idle,
        truncate=args.truncate,
    )
    print(
        f"replay {summary.mode} done in {summary.seconds:.1f}s: {summary.replayed} records "
        f"replayed ({summary.per_second:.0f}/s), {summary.skipped} skipped, "
        f"{summary.outputs} outputs; group {summary.group}"
        + (f"; model {summary.model_version}" if summary.model_version else "")
    )
    return 0


# -- sql, events, report ----------------------------------------------------------------------
def query(run_dir: Path, sql: str) -> tuple[list[str], list[list[Any]]]:
    """Answer SQL from a run's ClickHouse: via the live sink if it runs, else chdb directly."""
    marker = run_dir / "sink.json"
    if marker.is_file():
        port = json.loads(marker.read_text())["port"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/sql", data=sql.encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = json.loads(response.read())
            return body["columns"], body["rows"]
        except urllib.error.HTTPError as exc:
            raise SkyloopError(json.loads(exc.read()).get("error", str(exc))) from None
        except urllib.error.URLError:
            pass  # the sink is gone (stale marker): read the files directly
    from processors.core.clickhouse import connect
    from processors.sink.query_server import jsonable

    if not (run_dir / "clickhouse").is_dir():
        raise SkyloopError(f"no ClickHouse data in {run_dir}")
    client = connect(f"chdb://{(run_dir / 'clickhouse').resolve()}")
    try:
        result = client.query(sql)
    except Exception as exc:
        raise SkyloopError(f"query failed: {exc}") from None
    finally:
        client.close()
    return list(result.column_names), jsonable(result.result_rows)


def _print_table(columns: list[str], rows: list[list[Any]], fmt: str) -> None:
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return
    if fmt == "json":
        print(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], indent=1))
        return
    if fmt == "tsv":
        print("\t".join(columns))
        for r in rows:
            print("\t".join(str(v) for v in r))
        return
    cells = [[str(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def cmd_sql(args: argparse.Namespace) -> int:
    columns, rows = query(_run_dir(args), args.query)
    _print_table(columns, rows, args.format)
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    """Refresh per-source rates every ``--interval`` s (``--count`` times; 0 = until Ctrl-C)."""
    from processors.top import TOTALS_SQL, rates, render, totals

    run_dir = _run_dir(args)
    previous, then = totals(query(run_dir, TOTALS_SQL)[1]), time.monotonic()
    shown = 0
    try:
        while args.count == 0 or shown < args.count:
            time.sleep(args.interval)
            current, now = totals(query(run_dir, TOTALS_SQL)[1]), time.monotonic()
            screen = render(current, rates(previous, current, now - then))
            clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
            print(f"{clear}skyloop top: {run_dir} (every {args.interval:g} s)\n{screen}")
            sys.stdout.flush()
            previous, then, shown = current, now, shown + 1
    except KeyboardInterrupt:
        return 130
    return 0


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def events_query(
    types: list[str] | None = None, subject: str | None = None, since: str | None = None
) -> str:
    """The audit-trail SQL, in log order, filtered by event types, subject and time.

    Raises :class:`ConfigError` for an unknown type or a ``since`` that is not ISO 8601.

    >>> sql = events_query(["drift.detected"], "sky", "2026-12-01T10:00Z")
    >>> for part in sql.split("WHERE ")[1].split(" AND "):
    ...     print(part)
    type IN ('drift.detected')
    subject = 'sky'
    at >= toDateTime64('2026-12-01 10:00:00.000', 3, 'UTC') ORDER BY kafka_offset
    """
    from datetime import UTC, datetime

    from processors.core.control import EVENT_TYPES

    where = []
    if types:
        unknown = sorted(set(types) - EVENT_TYPES)
        if unknown:
            raise ConfigError(
                f"--type {', '.join(unknown)}: unknown; accepted: {', '.join(sorted(EVENT_TYPES))}"
            )
        where.append(f"type IN ({', '.join(_sql_string(t) for t in types)})")
    if subject is not None:
        where.append(f"subject = {_sql_string(subject)}")
    if since is not None:
        try:
            at = datetime.fromisoformat(since)
        except ValueError:
            raise ConfigError(
                f"--since {since!r}: accepted values are ISO 8601 times, e.g. 2026-12-01T10:00Z"
            ) from None
        at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
        stamp = at.strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d}"
        where.append(f"at >= toDateTime64('{stamp}', 3, 'UTC')")
    return (
        "SELECT kafka_offset AS offset, at, type, subject, issued_by, params, evidence "
        "FROM control_events FINAL "
        + (f"WHERE {' AND '.join(where)} " if where else "")
        + "ORDER BY kafka_offset"
    )


def cmd_events(args: argparse.Namespace) -> int:
    sql = events_query(args.type, args.subject, args.since)
    columns, rows = query(_run_dir(args), sql)
    _print_table(columns, rows, args.format)
    return 0


def _live_bootstrap(args: argparse.Namespace) -> tuple[str, str]:
    """Bootstrap servers and topic prefix of a running local pipeline (its ``stack.json``)."""
    import socket

    run_dir = _run_dir(args)
    marker = run_dir / "stack.json"
    hint = "start `skyloop run`, or set SKYLOOP_BOOTSTRAP_SERVERS to the pipeline's Kafka"
    if not marker.is_file():
        raise SkyloopError(f"no running pipeline in {run_dir}: {hint}")
    stack = json.loads(marker.read_text())
    host, _, port = str(stack["bootstrap"]).rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        raise SkyloopError(f"the pipeline of {run_dir} is not running any more: {hint}") from None
    return str(stack["bootstrap"]), str(stack.get("topic_prefix", ""))


def cmd_control(args: argparse.Namespace) -> int:
    from processors.core.kafka import ControlFollower, make_producer, produce_control_event
    from processors.operator import OperatorRequest, operator_event

    settings = _settings(args)
    if settings.bootstrap_servers is not None:
        bootstrap = settings.bootstrap_servers
        artifacts = settings.artifacts_dir
    else:
        bootstrap, prefix = _live_bootstrap(args)
        settings = settings.model_copy(update={"topic_prefix": prefix})
        artifacts = _run_dir(args) / "artifacts"
    request = OperatorRequest(
        action=args.action,
        source=getattr(args, "source", None),
        value=getattr(args, "value", None),
        detector=getattr(args, "detector", None),
        model=getattr(args, "model", None),
        reason=args.reason,
        duration_s=duration_seconds(args.duration) if getattr(args, "duration", None) else None,
        weights=tuple(getattr(args, "pairs", None) or ()),
        force=args.force,
    )
    follower = ControlFollower(settings, bootstrap).start()
    try:
        if not follower.wait_caught_up(timeout_s=30):
            raise SkyloopError("could not read control.events to its end within 30 s")
        if args.action == "register":
            event = _registration(args, settings, follower.state, artifacts)
        else:
            event = operator_event(request, follower.state)
        producer = make_producer(settings, bootstrap, **{"linger.ms": 0})
        produce_control_event(producer, settings, event)
        follower.wait_until(lambda _s: follower.has_event(event["event_id"]), timeout_s=10)
    finally:
        follower.close()
    print(
        f"emitted {event['type']} for {event['subject']} (event {event['event_id']}, "
        f"issued by {event['issued_by']})"
    )
    return 0


def _registration(
    args: argparse.Namespace, settings: Any, state: Any, artifacts: Path
) -> ControlEventRecord:
    """Store the weights and a model card, and build the ``model.registered`` event."""
    from processors.core.artifacts import ArtifactStore
    from processors.core.registry import ModelCard, code_version, register
    from processors.operator import check_new_version, operator_name

    version = check_new_version(args.model, state)
    weights: Path = args.weights
    if not weights.is_file():
        raise ConfigError(f"--weights {weights}: no such file")
    store = ArtifactStore(artifacts)
    card = ModelCard(
        version=version,
        kind=args.kind,
        weights=store.put_bytes(weights.read_bytes()),
        backbone=(args.backbone or settings.backbone) if args.kind == "scorer" else None,
        parent=args.parent,
        code=code_version(),
        notes=args.reason,
    )
    return register(store, card, operator_name())


def cmd_models(args: argparse.Namespace) -> int:
    """The model registry: every registered version, its role, gate, metrics and lineage."""
    from processors.core.registry import registry_view

    sql = (
        "SELECT event_id, type, subject, at, issued_by, params, evidence, caused_by "
        "FROM control_events FINAL WHERE type LIKE 'model.%' ORDER BY kafka_offset"
    )
    _columns, rows = query(_run_dir(args), sql)
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
        _print_table(columns, table, args.format)
    return 0


def _as_time(value: Any) -> Any:
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def duration_seconds(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1h30m`` → seconds; ConfigError otherwise.

    >>> duration_seconds("1h30m"), duration_seconds("45"), duration_seconds("2.5m")
    (5400.0, 45.0, 150.0)
    """
    import re

    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?[smhd]?\s*)+)", text)
    tokens = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text) if parts else []
    if not tokens or (len(tokens) > 1 and any(unit == "" for _, unit in tokens)):
        raise ConfigError(f"{text!r}: accepted durations look like 90s, 30m, 2h or 1h30m")
    return sum(float(number) * units[unit or "s"] for number, unit in tokens)


def cmd_report(args: argparse.Namespace) -> int:
    from processors.report.run_report import write_run_report

    path, _counts = write_run_report(_run_dir(args), _settings(args))
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyloop", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("SKYLOOP_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="YAML settings file (also $SKYLOOP_CONFIG)")
        p.add_argument("--data-dir", type=Path, help="data folder (default .skyloop)")

    run = sub.add_parser("run", help="run the pipeline on the embedded local stack")
    common(run)
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
        "--timeout",
        type=float,
        default=None,
        help="give up after this many seconds (default: an hour plus --duration)",
    )
    run.set_defaults(func=cmd_run)

    worker = sub.add_parser("worker", help="run one processor against SKYLOOP_BOOTSTRAP_SERVERS")
    common(worker)
    worker.add_argument("name", choices=WORKER_NAMES)
    worker.add_argument(
        "--images", type=int, default=None, help="ingest: stop after N items (default/0: all)"
    )
    worker.add_argument("--source", action="append", help="ingest: source spec (repeatable)")
    worker.add_argument("--duration", help="ingest: stop taking items after this long")
    worker.set_defaults(func=cmd_worker)

    init = sub.add_parser(
        "init", help="create the topics and apply the ClickHouse migrations (idempotent)"
    )
    common(init)
    init.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="retry for this many seconds while Kafka or ClickHouse do not answer yet",
    )
    init.set_defaults(func=cmd_init)

    replay = sub.add_parser(
        "replay",
        help="rescore images.raw with a model version, or rebuild ClickHouse from the topics",
        description=(
            "Reprocess what the topics hold now, under a consumer group of its own (live "
            "consumers are not disturbed); idempotent. Against SKYLOOP_BOOTSTRAP_SERVERS, or "
            "the latest running `skyloop run`."
        ),
    )
    common(replay)
    replay.add_argument("--run", type=Path, help="a run folder (default: the latest run)")
    replay.add_argument(
        "--model", help="model version to score with (default: the production one; see models)"
    )
    replay.add_argument("--since", help="only images observed at or after this ISO 8601 time")
    replay.add_argument("--until", help="only images observed before this ISO 8601 time")
    replay.add_argument("--source", action="append", help="only this source (repeatable)")
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

    control = sub.add_parser(
        "control",
        help=(
            "emit an operator's control event (pause, resume, threshold, recalibrate, weights, "
            "register, promote, rollback)"
        ),
        description=(
            "Emit a control event to the running pipeline (the latest local run, or "
            "SKYLOOP_BOOTSTRAP_SERVERS); every processor folds it like the controller's own."
        ),
    )
    actions = control.add_subparsers(dest="action", required=True)

    def action(name: str, helptext: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=helptext)
        common(p)
        p.add_argument("--run", type=Path, help="a run folder (default: the latest run)")
        p.add_argument("--reason", help="why (kept in the event)")
        p.add_argument(
            "--force", action="store_true", help="accept a source the log has not mentioned yet"
        )
        p.set_defaults(func=cmd_control)
        return p

    pause = action("pause", "pause the pipeline (or one source with --source)")
    pause.add_argument("--source", help="pause only this source's ingestion")
    pause.add_argument("--for", dest="duration", help="lift after this long (30s, 10m, 2h)")
    resume = action("resume", "resume the pipeline (or one source with --source)")
    resume.add_argument("--source", help="resume only this source")
    threshold = action("threshold", "set a source's threshold (calibrated score in (0, 1])")
    threshold.add_argument("source")
    threshold.add_argument("value", type=float)
    threshold.add_argument("--detector", help="one detector only (default: all three)")
    threshold.add_argument("--model", help="one model version only (default: whatever serves)")
    recalibrate = action("recalibrate", "recalibrate a source from its most recent images")
    recalibrate.add_argument("source")
    weights = action("weights", "set the sources' shares of ingestion (SOURCE=WEIGHT ...)")
    weights.add_argument("pairs", nargs="+", metavar="SOURCE=WEIGHT")
    register = action("register", "register a model version (gate, shadow, canary follow)")
    register.add_argument("model", metavar="VERSION", help="a new, unique version name")
    register.add_argument("--weights", type=Path, required=True, help="weights file")
    register.add_argument("--kind", choices=("scorer", "detector"), default="scorer")
    register.add_argument("--backbone", help="scorer: timm model name (default: the setting)")
    register.add_argument("--parent", help="the version this one derives from")
    for name, helptext in (
        ("promote", "promote a gated model version to production now"),
        ("rollback", "take a model version out of canary/shadow, or production back"),
    ):
        action(name, helptext).add_argument("model", metavar="VERSION")

    for name, func, helptext in (
        ("sql", cmd_sql, "answer SQL from the run's ClickHouse"),
        ("events", cmd_events, "print the control-event audit trail"),
        ("report", cmd_report, "write the Markdown report again"),
        ("models", cmd_models, "list the model registry: roles, gates, metrics, lineage"),
        ("top", cmd_top, "live per-source rates of a run (images, scores, flags, dead letters)"),
    ):
        p = sub.add_parser(name, help=helptext)
        common(p)
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


if __name__ == "__main__":
    sys.exit(main())

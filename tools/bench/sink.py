"""ClickHouse sink rows/s: score records through the embedded broker into chdb.

Usage (from the repository root)::

    python tools/bench/sink.py [--rows 100000] [--batch 20000] [--rounds 3] [--path both]

Order: an embedded Tansu broker starts; ``--rows`` ScoreRecords (three detectors, a 1280-d
fp16 embedding as the scorer writes it, two sources) are Avro-encoded and produced to
``scores``; then ``Runner(SinkProcessor)`` (the sink as ``skyloop worker sink`` runs it, batch
``--batch``, no SQL endpoint) consumes them into a migrated chdb database. Timed from the first
batch handed to the sink until its progress file counts every row consumed and committed (Avro
decode, row building, one INSERT per batch, commit); the consumer-group join is excluded. The
bench then checks that ``scores FINAL`` holds every row once. Each round runs both sink paths
on fresh stacks, one after the other: the Avro landing path (the default) and the record path
(``sink_avro_landing=false``); their ratio per round is what this shared machine's load moves
least.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from processors.core.clickhouse import connect
from processors.core.codec import default_codec
from processors.core.config import load_settings
from processors.core.kafka import ensure_topics, make_producer, partition_for
from processors.core.progress import read_progress
from processors.core.records import TOPICS
from processors.core.runner import Runner, StopSignal
from processors.core.stack import EmbeddedBroker
from processors.sink.processor import SinkProcessor, relax_gc
from tools.bench.machine import cpu_line

__all__ = ["main"]


def _score(n: int, embedding: bytes, at: datetime) -> dict[str, object]:
    return {
        "image_id": f"{n:064x}",
        "source": ("synthetic", "ztf")[n % 2],
        "model_version": "efficientnet_lite0@1",
        "backbone": "efficientnet_lite0",
        "role": "production",
        "detectors": [
            {"detector": d, "raw": 1.5 + n % 7, "score": 0.5, "threshold": 0.95, "vote": False}
            for d in ("mahalanobis", "energy", "knn")
        ],
        "ensemble_score": 0.5,
        "votes_for": 0,
        "votes_needed": 2,
        "is_candidate": n % 20 == 0,
        "calibrated": True,
        "batch_size": 32,
        "latency_ms": 6.0,
        "control_offset": 3,
        "scored_at": at,
        "embedding": embedding,
    }


def _measure(rows: int, batch: int, landing: bool, rounds_dir: Path) -> tuple[float, float, int]:
    """One sink run over ``rows`` fresh scores: (rows/s, seconds inside ``process``, batches)."""
    workdir = Path(tempfile.mkdtemp(dir=rounds_dir))
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        settings = load_settings(
            data_dir=workdir / "data", session_timeout_ms=6000, sink_avro_landing=landing
        )
        bootstrap = broker.bootstrap_servers
        ensure_topics(settings, bootstrap)
        codec = default_codec()
        producer = make_producer(settings, bootstrap, **{"linger.ms": 50})
        embedding = np.random.default_rng(0).standard_normal(1280).astype("<f2").tobytes()
        at = datetime.now(UTC)
        partitions = TOPICS["scores"].partitions
        for n in range(rows):
            record = _score(n, embedding, at)
            producer.produce(
                settings.topic("scores"),
                key=str(record["image_id"]).encode(),
                value=codec.encode(record, "skyloop.ScoreRecord"),
                partition=partition_for(str(record["source"]), partitions),
            )
            if n % 1000 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0

        progress = workdir / "progress"
        relax_gc()  # as `skyloop worker sink` does
        sink = SinkProcessor(serve_queries=False)
        stop = StopSignal()
        runner = Runner(
            sink,
            settings,
            bootstrap,
            stop=stop,
            progress_dir=progress,
            batch_size=batch,
            max_wait_s=settings.sink.batch_max_wait_ms / 1000,
            max_batch_bytes=settings.sink.batch_max_bytes,
        )
        first: list[float] = []
        inside: list[float] = []
        original = sink.process

        def timed(batch, state):
            if not first:
                first.append(time.perf_counter())
            t = time.perf_counter()
            try:
                return original(batch, state)
            finally:
                inside.append(time.perf_counter() - t)

        sink.process = timed  # type: ignore[method-assign]
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        while read_progress(progress, "sink").get("consumed", 0) < rows:
            time.sleep(0.01)
            if not thread.is_alive():
                raise SystemExit("the sink stopped early; see the log above")
        elapsed = time.perf_counter() - first[0]
        fallbacks = read_progress(progress, "sink").get("landing_fallbacks", 0)
        stop.event.set()
        thread.join(60)

    client = connect(settings.resolved_clickhouse_dsn)
    try:
        stored = int(str(client.command("SELECT count() FROM scores FINAL")))
    finally:
        client.close()
    if stored != rows:
        raise SystemExit(f"scores FINAL holds {stored} rows, {rows} produced")
    if fallbacks:
        raise SystemExit(f"{fallbacks} batches fell back to the record path")
    return rows / elapsed, sum(inside), len(inside)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each path, alternated")
    parser.add_argument(
        "--path", choices=("both", "landing", "record"), default="both", help="which sink path"
    )
    args = parser.parse_args(argv)

    print(cpu_line(), flush=True)
    paths = {"both": [True, False], "landing": [True], "record": [False]}[args.path]
    results: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for landing in paths:
                rate, inside, batches = _measure(args.rows, args.batch, landing, Path(tmp))
                results[landing].append(rate)
                name = "landing (Avro parsed by ClickHouse)" if landing else "record path"
                print(
                    f"round {round_ + 1} {name}: {rate:,.0f} score rows/s "
                    f"({batches} batches, {inside:.2f} s inside the sink's process)",
                    flush=True,
                )
    for landing in paths:
        rates = sorted(results[landing])
        name = "landing" if landing else "record path"
        print(
            f"{name:<12} median {rates[len(rates) // 2]:,.0f} score rows/s "
            f"(min {rates[0]:,.0f}, max {rates[-1]:,.0f}; {args.rows} rows, batch {args.batch}; "
            "every row once under FINAL)"
        )
    if len(paths) == 2:
        ratios = sorted(a / b for a, b in zip(results[True], results[False], strict=True))
        print(f"landing / record path, per round: {', '.join(f'{r:.1f}x' for r in ratios)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Replay throughput: stored score records rebuilt into ClickHouse (``skyloop replay``).

Usage (from the repository root)::

    python tools/bench/replay.py [--images 20000]

Starts the embedded broker, produces ``--images`` score records shaped like the scorer's
(three detectors, a 1280-d float16 embedding) to ``scores``, then runs
``skyloop replay --rebuild-clickhouse`` into a fresh chdb and prints records/s over the busy
time (first record read to last batch written; the group join and the idle wait that ends a
replay are reported apart).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from processors.core.clickhouse import connect
from processors.core.codec import default_codec
from processors.core.config import load_settings
from processors.core.kafka import ensure_topics, make_producer, partition_for
from processors.core.records import TOPICS, ScoreRecord
from processors.core.stack import EmbeddedBroker
from processors.replay import run_replay

__all__ = ["main"]


def _score(i: int, rng: np.random.Generator) -> ScoreRecord:
    detectors = [
        {
            "detector": d,
            "raw": float(rng.normal()),
            "score": float(rng.random()),
            "threshold": 0.9,
            "vote": False,
        }
        for d in ("mahalanobis", "energy", "knn")
    ]
    return ScoreRecord(
        image_id=f"{i:064x}",
        source=("synthetic", "hubble")[i % 2],
        model_version="efficientnet_lite0@bench",
        backbone="efficientnet_lite0",
        role="production",
        detectors=detectors,  # type: ignore[typeddict-item]
        ensemble_score=float(rng.random()),
        votes_for=0,
        votes_needed=2,
        is_candidate=False,
        calibrated=True,
        batch_size=32,
        latency_ms=5.0,
        control_offset=3,
        scored_at=datetime.now(UTC),
        embedding=rng.standard_normal(1280).astype("<f2").tobytes(),
        calibration_id="bench",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20_000)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "b.log") as broker,
    ):
        tag = uuid.uuid4().hex[:8]
        settings = load_settings(
            data_dir=Path(tmp) / "data",
            topic_prefix=f"bench{tag}.",
            group_prefix=f"bench{tag}",
            clickhouse_dsn=f"chdb://{Path(tmp) / 'ch'}",
        )
        ensure_topics(settings, broker.bootstrap_servers)
        codec, rng = default_codec(), np.random.default_rng(0)
        producer = make_producer(settings, broker.bootstrap_servers, **{"linger.ms": 50})
        t0 = time.perf_counter()
        for i in range(args.images):
            rec = _score(i, rng)
            producer.produce(
                settings.topic("scores"),
                key=rec["image_id"].encode(),
                value=codec.encode(rec, "skyloop.ScoreRecord"),
                partition=partition_for(rec["source"], TOPICS["scores"].partitions),
            )
            if i % 1000 == 0:
                producer.poll(0)
        producer.flush(60)
        produced_s = time.perf_counter() - t0
        time.sleep(1.0)  # the replay covers records older than its start
        summary = run_replay(
            settings,
            broker.bootstrap_servers,
            "rebuild",
            name="bench",
            idle_s=5.0,
            out=io.StringIO(),
        )
        client = connect(str(settings.clickhouse.dsn))
        try:
            stored = client.query("SELECT count() FROM scores FINAL").result_rows[0][0]
        finally:
            client.close()
    print(
        f"produced {args.images} score records in {produced_s:.1f}s; replay rebuilt {stored} rows: "
        f"{summary.replayed} records in {summary.busy_seconds:.2f}s busy = "
        f"{summary.per_second:.0f} records/s (whole command {summary.seconds:.1f}s incl. "
        f"group join and the {5.0:.0f}s idle end)"
    )
    return 0 if stored == args.images else 1


if __name__ == "__main__":
    sys.exit(main())

"""Scoring pipeline vs raw backbone, in one run, on the same model, batch size and threads.

Usage (from the repository root)::

    python tools/bench/scoring.py [--images 384] [--rounds 3] [--batch 32] [--threads N]
                                  [--chunks 1] [--compile] [--iters 10]

What it does:
1. builds the backbone once (the same instance serves the raw measure and the processor);
2. starts an embedded Tansu broker and creates the topics;
3. calibrates the source like the controller does: the first ``--reference`` images of a
   separate synthetic stream (same generator settings, other seed, anomalies included, never
   filtered by truth) are embedded, stored as a reference artifact, and a
   ``calibration.updated`` event with thresholds from ``OODEnsemble.thresholds_for_fpr`` is
   emitted, so every benchmarked image runs the full three-detector ensemble;
4. pre-encodes ``rounds x images`` synthetic 64x64 FITS ImageRecords (Avro), starts
   ``Runner(ScoreProcessor(backbone=...))`` in a thread and warms it up (consumer-group join,
   first batches) with two batches of other images;
5. per round: raw backbone img/s (``measure_backbone_throughput``, forward on a preprocessed
   batch) at the batch the model runs (consume batch / ``--chunks``) and at the consume batch,
   then the round's images are produced to ``images.raw`` and the pipeline is timed from the
   start of the first batch handled (after ``consume`` returned it) to the end of the last
   (outputs flushed, offsets committed), then raw again; the round's ratio is the pipeline rate
   over the mean of the two raw rates around it at the model's batch;
6. checks that the scores topic holds one calibrated production score per image.

The reported ratio is the median over rounds. The machine may be shared: the per-round
figures show the noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from confluent_kafka import TopicPartition

from processors.core.artifacts import ArtifactStore
from processors.core.codec import default_codec
from processors.core.config import Settings, load_settings
from processors.core.control import ControlState, new_event
from processors.core.events import EventType
from processors.core.imaging import decode_image
from processors.core.kafka import (
    ensure_topics,
    make_consumer,
    make_producer,
    partition_for,
    produce_control_event,
)
from processors.core.records import TOPICS
from processors.core.runner import InMessage, Runner
from processors.core.stack import EmbeddedBroker
from processors.ingest.sources.items import RawImage, to_record
from processors.ingest.synthetic.sky import SyntheticSky
from processors.ood.ensemble import OODEnsemble, energy_score
from processors.ood.reference import ReferenceSet, save_reference
from processors.score.backbone import Backbone
from processors.score.models import backbone_spec_from_settings
from processors.score.processor import ScoreProcessor
from tools.bench.backbone import measure_backbone_throughput

__all__ = ["TimedRunner", "calibrate_source", "main"]

SOURCE = "bench-sky"


class TimedRunner(Runner):
    """The real runner, timing each batch from hand-over (after consume) to commit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handled = 0
        self.busy_s = 0.0
        self.first_started: float | None = None
        self.last_done = 0.0
        self.changed = threading.Condition()

    def _handle(self, batch: list[InMessage], producer: Any, consumer: Any, state: Any) -> None:
        started = time.perf_counter()
        if self.first_started is None:
            self.first_started = started
        super()._handle(batch, producer, consumer, state)
        done = time.perf_counter()
        with self.changed:
            self.busy_s += done - started
            self.handled += len(batch)
            self.last_done = done
            self.changed.notify_all()

    def reset_round(self) -> None:
        with self.changed:
            self.first_started, self.busy_s = None, 0.0

    def wait_handled(self, count: int, timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.handled >= count, timeout_s)


def calibrate_source(
    settings: Settings,
    bootstrap: str,
    backbone: Backbone,
    images: list[RawImage],
) -> dict[str, float]:
    """Emit ``calibration.updated`` for ``SOURCE`` from ``images`` (a reference window).

    Returns the thresholds. The artifact is written before the event (as the controller does).
    """
    arrays = [decode_image(to_record(image)) for image in images]
    out = backbone.embed(arrays, batch_size=settings.batch.size)
    reference = ReferenceSet(out.features, energy_score(out.logits), backbone.version)
    artifact_id = save_reference(ArtifactStore(settings.artifacts_dir), reference)
    thresholds = OODEnsemble.fit(reference).thresholds_for_fpr(
        settings.calibration.target_fpr, settings.calibration.vote_k
    )
    producer = make_producer(settings, bootstrap)
    event = new_event(
        EventType.CALIBRATION_UPDATED,
        SOURCE,
        "bench",
        {
            "model_version": backbone.version,
            "artifact_id": artifact_id,
            "target_fpr": settings.calibration.target_fpr,
            "vote_k": settings.calibration.vote_k,
            "thresholds": thresholds,
        },
    )
    produce_control_event(producer, settings, event)
    return thresholds


def _cpu_seconds(broker_pid: int | None) -> tuple[float, float, float]:
    """(machine busy CPU s, this process's CPU s, the broker's CPU s), from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick  # all but idle and iowait
        broker = 0.0
        if broker_pid is not None:
            stat = Path(f"/proc/{broker_pid}/stat").read_text().rsplit(")", 1)[1].split()
            broker = (int(stat[11]) + int(stat[12])) / tick
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0, 0.0
    times = os.times()
    return busy, times.user + times.system, broker


def _stage_seconds(processor: ScoreProcessor) -> dict[str, float]:
    times = getattr(processor, "times", None)  # absent in older processors (before/after runs)
    return times.as_dict() if times is not None else {}


def _produce_images(settings: Settings, producer: Any, values: list[tuple[bytes, bytes]]) -> None:
    partition = partition_for(SOURCE, TOPICS["images.raw"].partitions)
    for key, value in values:
        producer.produce(settings.topic("images.raw"), key=key, value=value, partition=partition)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("images were not delivered within 60 s")


def _count_scores(settings: Settings, bootstrap: str, expected: int) -> dict[str, int]:
    codec = default_codec()
    consumer = make_consumer(settings, bootstrap, f"{settings.kafka.group_prefix}.bench-check")
    topic = settings.topic("scores")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(TOPICS["scores"].partitions)])
    counts = {"scores": 0, "production": 0, "calibrated": 0, "candidates": 0}
    ids: set[str] = set()
    deadline = time.monotonic() + 60
    while len(ids) < expected and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.5):
            value = msg.value()
            if msg.error() or value is None:
                continue
            score = codec.decode(value, "skyloop.ScoreRecord")
            counts["scores"] += 1
            counts["production"] += int(score["role"] == "production")
            counts["calibrated"] += int(score["calibrated"])
            counts["candidates"] += int(score["is_candidate"])
            ids.add(score["image_id"])
    consumer.close()
    counts["distinct_images"] = len(ids)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384, help="images per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch)")
    parser.add_argument("--chunks", type=int, default=1, help="Settings.score.chunks")
    parser.add_argument("--compile", action="store_true", help="Settings.score.torch_compile")
    parser.add_argument("--iters", type=int, default=10, help="raw backbone timed iterations")
    parser.add_argument("--reference", type=int, default=128, help="calibration window size")
    parser.add_argument("--anomaly-rate", type=float, default=0.05)
    parser.add_argument("--size", type=int, default=64, help="synthetic cutout side (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="skyloop-bench-"))
    token = uuid.uuid4().hex[:8]
    settings = load_settings(
        data_dir=workdir / "data",
        topic_prefix=f"bench{token}.",
        group_prefix=f"bench{token}",
        batch_size=args.batch,
        torch_threads=args.threads,
        torch_compile=args.compile,
        score_chunks=args.chunks,
        reference_size=args.reference,
        session_timeout_ms=6000,
    )
    backbone = Backbone(backbone_spec_from_settings(settings.score))
    print(
        f"model={backbone.version} device={backbone.device} bf16={backbone.bf16} "
        f"channels_last={backbone.channels_last} compile={args.compile} "
        f"threads={torch.get_num_threads()} batch={args.batch} chunks={args.chunks} "
        f"cpus={os.cpu_count()} torch={torch.__version__}"
    )
    reference_sky = SyntheticSky(
        name=SOURCE, seed=args.seed + 1000, size=args.size, anomaly_rate=args.anomaly_rate
    )
    stream = SyntheticSky(
        name=SOURCE, seed=args.seed, size=args.size, anomaly_rate=args.anomaly_rate
    )
    codec = default_codec()
    warmup = 2 * args.batch
    values = []
    for n in range(warmup + args.rounds * args.images):
        record = to_record(stream.image(n))
        values.append((record["image_id"].encode(), codec.encode(record, "skyloop.ImageRecord")))

    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        bootstrap = broker.bootstrap_servers
        ensure_topics(settings, bootstrap)
        thresholds = calibrate_source(
            settings, bootstrap, backbone, [reference_sky.image(n) for n in range(args.reference)]
        )
        print(f"calibrated {SOURCE} on {args.reference} reference images: thresholds {thresholds}")
        processor = ScoreProcessor(backbone=backbone)
        runner = TimedRunner(processor, settings, bootstrap)
        thread = threading.Thread(target=runner.run, name="score-runner", daemon=True)
        producer = make_producer(settings, bootstrap)
        thread.start()
        try:
            _produce_images(settings, producer, values[:warmup])
            if not runner.wait_handled(warmup, 120):
                raise RuntimeError("the scoring runner did not handle the warm-up images")
            state: ControlState = runner.ctx.extra["follower"].state
            if state.calibration_for(backbone.version, SOURCE) is None:
                raise RuntimeError("the processor has not applied the calibration")
            model_batch = -(-args.batch // args.chunks)  # what the backbone runs per call
            batches = sorted({model_batch, args.batch})
            print(
                f"img/s per round; raw@B = raw backbone at batch B, mean of before and after "
                f"the round; the model runs batches of {model_batch} (consume batch "
                f"{args.batch} / {args.chunks} chunk(s)), so ratio = pipeline / raw@{model_batch}"
                f"; busy = share of the round inside batches (the rest waits in consume); "
                f"stage ms/img: control decode preprocess forward decide encode; cores used "
                f"during the round by this process, the broker, other processes"
            )
            print(
                "round  pipeline  "
                + "  ".join(f"{'raw@' + str(b):>8}" for b in batches)
                + "   ratio  busy  stages                               cores"
            )
            ratios, pipes = [], []
            raws: dict[int, list[float]] = {b: [] for b in batches}
            done = warmup
            for r in range(args.rounds):
                raw_round = {
                    b: [measure_backbone_throughput(backbone, b, max(args.iters, 320 // b))]
                    for b in batches
                }
                before = _stage_seconds(processor)
                runner.reset_round()
                cpu_before = _cpu_seconds(broker.pid)
                chunk = values[warmup + r * args.images : warmup + (r + 1) * args.images]
                _produce_images(settings, producer, chunk)
                done += len(chunk)
                if not runner.wait_handled(done, 300):
                    raise RuntimeError(f"round {r}: images were not all scored within 300 s")
                cpu_after = _cpu_seconds(broker.pid)
                assert runner.first_started is not None
                wall = runner.last_done - runner.first_started
                busy, ours, tansu = (a - b for a, b in zip(cpu_after, cpu_before, strict=True))
                pipeline = len(chunk) / wall
                after = _stage_seconds(processor)
                stages = " ".join(
                    f"{(after[k] - before[k]) * 1000 / len(chunk):.2f}" if k in after else "-"
                    for k in ("control", "decode", "preprocess", "forward", "decide", "encode")
                )
                for b in batches:
                    raw_round[b].append(
                        measure_backbone_throughput(backbone, b, max(args.iters, 320 // b))
                    )
                    raws[b].extend(raw_round[b])
                ratio = pipeline / statistics.mean(raw_round[model_batch])
                ratios.append(ratio)
                pipes.append(pipeline)
                print(
                    f"{r:>5}  {pipeline:8.1f}  "
                    + "  ".join(f"{statistics.mean(raw_round[b]):8.1f}" for b in batches)
                    + f"  {ratio:6.3f}  {runner.busy_s / wall:.2f}  {stages}  "
                    f"{ours / wall:.2f} {tansu / wall:.2f} {(busy - ours - tansu) / wall:.2f}"
                )
        finally:
            runner.stop.event.set()
            thread.join(60)
            producer.flush(10)
        counts = _count_scores(settings, bootstrap, len(values))
    print(f"scores topic: {counts} (expected {len(values)} images, all calibrated production)")
    if counts["distinct_images"] != len(values) or counts["calibrated"] != counts["scores"]:
        print("ERROR: the scores topic does not hold one calibrated score per image")
        return 1
    raw_text = ", ".join(f"batch {b}: {statistics.median(raws[b]):.1f}" for b in batches)
    print(
        f"raw backbone img/s (median of {len(raws[model_batch])}) {raw_text}; scoring pipeline: "
        f"{statistics.median(pipes):.1f} img/s (median of {len(pipes)}); ratio to raw at the "
        f"model's batch {model_batch}: {statistics.median(ratios):.3f} (median of rounds)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

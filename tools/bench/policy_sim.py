"""Offline replay of the control loop: the scorer's decisions and the controller, in-process.

No Kafka, no processes: features and raw energies of a stream (computed once by the real
backbone) go through :func:`processors.score.decisions.decide` in batches, the resulting score
records through :class:`processors.controller.controller.Controller`, and the events it emits are
folded into the ``ControlState`` the next batches are scored with, ``lag`` batches later (the
time a real event takes to reach the scorer). It exists to study policies quickly; the figures
in BENCHMARKS.md come from ``tools/bench/drift.py``, which runs the real processes.

Usage (from the repository root)::

    python tools/bench/policy_sim.py --stream "synthetic?kind=difference&drifts=2000:noisy" \\
        --images 4000 [--policy skyloop|static|astrolens] [--lag 1]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from numpy.typing import NDArray

from processors.controller.controller import Controller, ControllerConfig, Emit
from processors.controller.state import MemoryRing, SourceState
from processors.core.artifacts import ArtifactStore
from processors.core.control import ControlState
from processors.core.events import EventType
from processors.core.records import ControlEventRecord, ScoreRecord, ScoreRevision
from processors.ood.ensemble import energy_score
from processors.ood.reference import load_reference
from processors.policies.profile import load_profile
from processors.score.decisions import EnsembleCache, decide

__all__ = ["Replay", "StreamFeatures", "embed_stream", "replay"]

SOURCE = "sim"
MODEL = "sim@1"


@dataclass(frozen=True)
class StreamFeatures:
    """A stream as the scorer sees it, plus its truth (read only to evaluate)."""

    features: NDArray[np.float32]
    energy: NDArray[np.float64]
    truth: NDArray[np.bool_]
    segments: list[str]


def embed_stream(spec: str, images: int, cache_dir: Path | None = None) -> StreamFeatures:
    """Embed the first ``images`` of a source spec with the default backbone (cached on disk)."""
    from processors.core.imaging import decode_image
    from processors.ingest.sources import source_from_spec
    from processors.ingest.sources.items import RawImage, to_record
    from processors.score.backbone import Backbone, BackboneSpec

    key = hashlib.sha256(f"{spec}|{images}".encode()).hexdigest()[:16]
    cached = (cache_dir / f"{key}.npz") if cache_dir else None
    if cached is not None and cached.is_file():
        data = np.load(cached, allow_pickle=False)
        return StreamFeatures(
            data["features"], data["energy"], data["truth"], list(data["segments"])
        )
    items = []
    for item in source_from_spec(spec):
        if isinstance(item, RawImage):
            items.append(item)
        if len(items) >= images:
            break
    backbone = Backbone(BackboneSpec())
    out = backbone.embed([decode_image(to_record(i)) for i in items], batch_size=32)
    stream = StreamFeatures(
        out.features.astype(np.float32),
        energy_score(out.logits),
        np.array([bool(i.truth and i.truth["is_anomaly"]) for i in items]),
        [(i.truth["segment"] if i.truth else None) or "" for i in items],
    )
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            cached,
            features=stream.features,
            energy=stream.energy,
            truth=stream.truth,
            segments=np.array(stream.segments),
        )
    return stream


@dataclass
class Replay:
    flagged: NDArray[np.bool_]
    calibrated: NDArray[np.bool_]
    scores: NDArray[np.float64]
    events: list[ControlEventRecord] = field(default_factory=list)
    event_at: list[int] = field(default_factory=list)  # stream index that triggered each event
    records: list[ScoreRecord] = field(default_factory=list)  # with keep_records
    revisions: list[ScoreRevision] = field(default_factory=list)  # scores.revised, in order
    revised: NDArray[np.bool_] | None = None
    """The stored decisions once every revision is applied (the warehouse's scores_revised);
    ``flagged`` stays the live ones."""


def _record(
    i: int, verdict: object, features: NDArray[np.float32], energy: float, offset: int
) -> ScoreRecord:
    v = verdict  # a processors.score.decisions.Verdict
    return ScoreRecord(
        image_id=f"img{i:07d}",
        source=SOURCE,
        model_version=MODEL,
        backbone="sim",
        role="production",
        detectors=list(v.detectors),  # type: ignore[attr-defined]
        ensemble_score=v.ensemble_score,  # type: ignore[attr-defined]
        votes_for=v.votes_for,  # type: ignore[attr-defined]
        votes_needed=v.votes_needed,  # type: ignore[attr-defined]
        is_candidate=v.is_candidate,  # type: ignore[attr-defined]
        calibrated=v.calibrated,  # type: ignore[attr-defined]
        batch_size=32,
        latency_ms=5.0,
        control_offset=offset,
        scored_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i),
        embedding=features.astype("<f2").tobytes(),
        calibration_id=v.calibration_id,  # type: ignore[attr-defined]
    )


def replay(
    stream: StreamFeatures,
    config: ControllerConfig,
    *,
    batch: int = 32,
    lag: int = 1,
    keep_records: bool = False,
    store: ArtifactStore | None = None,
) -> Replay:
    """Run the stream through decide + Controller; see the module docstring.

    ``keep_records``: keep every score record (to replay them elsewhere, e.g. through Kafka).
    """
    store = store or ArtifactStore(Path(tempfile.mkdtemp(prefix="skyloop-sim-")))
    controller = Controller(
        config,
        MemoryRing(),
        lambda i: load_profile(store, i),
        lambda i: load_reference(store, i),
    )
    ensembles = EnsembleCache(store)
    source = SourceState(SOURCE)
    state = ControlState.initial()
    n = len(stream.energy)
    out = Replay(np.zeros(n, bool), np.zeros(n, bool), np.zeros(n))
    pending: list[tuple[int, list[Emit]]] = []  # (batch index it applies at, events)
    offset = -1
    for b, start in enumerate(range(0, n, batch)):
        due = [e for at, emits in pending if at <= b for e in emits]
        pending = [(at, emits) for at, emits in pending if at > b]
        for emit in due:
            offset += 1
            state = state.apply(emit.event, offset)
        rows = np.arange(start, min(start + batch, n))
        verdicts = decide(
            stream.features[rows],
            stream.energy[rows],
            [SOURCE] * rows.size,
            state,
            MODEL,
            ensembles,
            default_vote_k=config.vote_k,
            source_overrides=True,
        )
        emitted: list[Emit] = []
        for i, verdict in zip(rows, verdicts, strict=True):
            out.flagged[i], out.calibrated[i] = verdict.is_candidate, verdict.calibrated
            out.scores[i] = verdict.ensemble_score
            record = _record(int(i), verdict, stream.features[i], float(stream.energy[i]), offset)
            if keep_records:
                out.records.append(record)
            for emit in controller.on_score(source, record, state):
                for blob in emit.artifacts:
                    store.put_bytes(blob)
                emitted.append(emit)
                out.events.append(emit.event)
                out.event_at.append(int(i))
                out.revisions.extend(emit.records)
        if emitted:
            initial = state.calibration_for(MODEL, SOURCE) is None
            # The scorer waits for a source's first calibration; later ones arrive with lag.
            pending.append((b + 1 if initial else b + 1 + lag, emitted))
    out.revised = out.flagged.copy()
    for revision in out.revisions:  # in order: a later revision of an image replaces one
        out.revised[int(revision["image_id"].removeprefix("img"))] = revision["is_candidate"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", default="synthetic?kind=difference&anomaly_rate=0.02")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--policy", default="skyloop")
    parser.add_argument("--lag", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "skyloop-sim")
    parser.add_argument("--window", type=int, default=64, help="drift window")
    parser.add_argument("--step", type=int, default=16, help="drift judged every STEP images")
    parser.add_argument("--quiet", action="store_true", help="summary only")
    parser.add_argument("--consecutive", type=int, default=2)
    parser.add_argument("--decay", type=float, default=0.002)
    parser.add_argument("--max-reference", type=int, default=1024)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    stream = embed_stream(args.stream, args.images, args.cache)
    from processors.policies.decay import ThresholdDecay

    config = ControllerConfig(
        policy=args.policy,
        drift_window=args.window,
        drift_step=args.step,
        drift_consecutive=args.consecutive,
        decay=ThresholdDecay(decay=args.decay),
        reference_max_size=args.max_reference,
    )
    result = replay(stream, config, lag=args.lag)
    first = int(np.flatnonzero(result.calibrated)[0])
    print(f"{args.stream}: {args.images} images, policy {args.policy}, lag {args.lag}")
    for e, at in zip(result.events, result.event_at, strict=True):
        if not args.quiet or e["type"] == EventType.DRIFT_DETECTED:
            extra = e["params"].get("reason") or ""
            print(f"  {at:6d} {e['type']:<20} {extra}")
    inside = total = 0
    for s in range(first, len(result.flagged), 128):
        rows = np.arange(s, min(s + 128, len(result.flagged)))
        t = stream.truth[rows]
        fpr = result.flagged[rows][~t].mean() if (~t).any() else float("nan")
        recall = result.flagged[rows][t].mean() if t.any() else float("nan")
        ok = 0.02 <= fpr <= 0.10
        inside, total = inside + ok, total + 1
        if not args.quiet or not ok:
            print(
                f"{s:6d}  {stream.segments[s]:<12} {fpr:6.3f} {result.flagged[rows].mean():7.3f}"
                f"  {recall:6.2f}{'' if ok else '  <- out of band'}"
            )
    onsets = [
        i for i in range(1, len(stream.segments)) if stream.segments[i] != stream.segments[i - 1]
    ]
    recoveries = []
    for onset in onsets:
        for n in range(0, 2048, 16):
            rows = np.arange(onset + n, min(onset + n + 128, len(result.flagged)))
            t = stream.truth[rows]
            if rows.size == 128 and 0.02 <= result.flagged[rows][~t].mean() <= 0.10:
                recoveries.append(n)
                break
        else:
            recoveries.append(-1)
    print(
        f"in band {inside}/{total} = {inside / total:.3f}; recovery after onsets {onsets}: "
        f"{recoveries}; {time.perf_counter() - started:.0f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

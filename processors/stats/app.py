"""The stats/controller Faust app: rolling per-source statistics → control events.

Consumes ``scores`` (Faust agent, 4 partitions, co-partitioned by source). Keeps a Faust table
``source_stats`` (per source: scored, candidates, uncalibrated, sum of ensemble scores),
restored from its changelog on restart. Folds ``control.events`` with a :class:`ControlFollower`
(always from the beginning, so its view of calibrations survives restarts).

Emits (each flushed alone, with evidence):
- ``calibration.updated`` (subject = the source) once a (model, source) reference window (the
  first ``reference_size`` uncalibrated images of that source) is full: the window is stored
  as a content-addressed reference artifact, then the event names it with thresholds at
  ``target_fpr``;
- ``threshold.set`` for each source the first time it is seen under a calibration, so every
  source has its own threshold line in the audit trail (later policies decay them).

Guarantees: an event is emitted only after its artifact is durably written; each (model,
source) is calibrated at most once per window (redelivered scores are ignored by image_id).
Limitation: the window lives in memory; if the app dies before the window is full, it is
refilled from scores that arrive after the restart.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from processors.control.calibration import ReferenceWindow, plan_calibration, window_row
from processors.core.artifacts import ArtifactStore
from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.control import ControlState, new_event
from processors.core.exceptions import CodecError
from processors.core.kafka import ControlFollower, make_producer, produce_control_event
from processors.core.progress import ProgressFile
from processors.core.records import TOPICS, ScoreRecord

__all__ = ["Controller", "build_app"]

log = logging.getLogger(__name__)


class Controller:
    """The decision part of the app, kept free of Faust so it can be driven directly."""

    ISSUER = "controller"

    def __init__(self, settings: Settings, bootstrap: str, progress: ProgressFile) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.progress = progress
        self.store = ArtifactStore(settings.artifacts_dir)
        self.follower: ControlFollower | None = None
        self.producer: Any = None
        self.windows: dict[tuple[str, str], ReferenceWindow] = {}
        self.calibrated: set[tuple[str, str]] = set()
        self.thresholded: set[tuple[str, str]] = set()  # (calibration event id, source)

    def start(self) -> None:
        self.follower = ControlFollower(self.settings, self.bootstrap).start()
        self.follower.wait_caught_up(timeout_s=60)
        self.producer = make_producer(self.settings, self.bootstrap, **{"linger.ms": 0})

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.close()
        if self.producer is not None:
            self.producer.flush(10)

    @property
    def state(self) -> ControlState:
        return self.follower.state if self.follower else ControlState.initial()

    def _emit(self, event_type: str, subject: str, params: dict[str, Any], **kw: Any) -> str:
        event = new_event(event_type, subject, self.ISSUER, params, **kw)  # type: ignore[arg-type]
        produce_control_event(self.producer, self.settings, event)
        self.progress.add(f"events.{event_type}")
        log.info("controller: %s %s %s", event_type, subject, params)
        return event["event_id"]

    def on_score(self, score: ScoreRecord) -> None:
        version, source = score["model_version"], score["source"]
        state = self.state
        cal = state.calibration_for(version, source)
        if cal is None and (version, source) not in self.calibrated:
            row = window_row(score)
            if row is None:
                return
            window = self.windows.setdefault(
                (version, source),
                ReferenceWindow(version, self.settings.reference_size, source),
            )
            window.add(score["image_id"], *row)
            if window.full:
                self._calibrate(window)
            return
        # Threshold overrides are per source and apply to production only (DESIGN §3).
        if cal is not None and score["calibrated"] and score["role"] == "production":
            key = (cal.event_id, score["source"])
            has_override = f"{version}|{source}" in state.source_thresholds
            if key not in self.thresholded and not has_override:
                self.thresholded.add(key)
                self._emit(
                    "threshold.set",
                    score["source"],
                    {"thresholds": dict(cal.thresholds), "model_version": version},
                    evidence={"calibration_target_fpr": cal.target_fpr},
                    caused_by=[cal.event_id],
                )

    def _calibrate(self, window: ReferenceWindow) -> None:
        s = self.settings
        plan = plan_calibration(window, s.target_fpr, s.vote_k)
        artifact_id = self.store.put_bytes(plan.reference.to_bytes())
        self._emit(
            "calibration.updated",
            window.source,
            {
                "model_version": window.model_version,
                "artifact_id": artifact_id,
                "target_fpr": s.target_fpr,
                "vote_k": s.vote_k,
                "thresholds": plan.thresholds,
            },
            evidence=plan.evidence,
        )
        self.calibrated.add((window.model_version, window.source))
        del self.windows[(window.model_version, window.source)]


def build_app(settings: Settings, bootstrap: str, progress: ProgressFile) -> faust.App:
    """A Faust app wired to ``settings``; run it with ``faust.Worker(app)``."""
    partitions = TOPICS["scores"].partitions
    app = faust.App(
        settings.group("stats"),
        broker=f"kafka://{bootstrap}",
        store="memory://",
        producer_max_batch_size=1,  # the embedded broker restores tables only with this
        broker_session_timeout=settings.session_timeout_ms / 1000,
        topic_partitions=partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
    )
    codec = default_codec()
    controller = Controller(settings, bootstrap, progress)
    scores_topic = app.topic(
        settings.topic("scores"),
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
    stats = app.Table("source_stats", default=dict, partitions=partitions)

    controller.start()  # replays control.events before the agent sees its first score

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    def _stop(app: faust.App, **_: Any) -> None:
        controller.stop()
        progress.write(force=True)

    @app.timer(0.5)
    async def _flush_progress() -> None:
        progress.write(force=True)

    @app.agent(scores_topic)
    async def on_scores(stream: Any) -> None:
        async for value in stream:
            progress.add("consumed")
            try:
                score: ScoreRecord = codec.decode(value, "skyloop.ScoreRecord")  # type: ignore[assignment]
            except CodecError as exc:
                log.error("stats: undecodable score skipped: %s", exc)
                progress.add("undecodable")
                continue
            controller.on_score(score)  # every role: shadow and canary fill their own windows
            if score["role"] == "shadow" or (score["role"] == "canary" and not score["calibrated"]):
                continue  # not the image's served decision: keep it out of the source's stats
            source = score["source"]
            current = dict(stats[source])
            current["scored"] = current.get("scored", 0) + 1
            current["candidates"] = current.get("candidates", 0) + int(score["is_candidate"])
            current["uncalibrated"] = current.get("uncalibrated", 0) + int(not score["calibrated"])
            current["ensemble_sum"] = current.get("ensemble_sum", 0.0) + score["ensemble_score"]
            stats[source] = current
            progress.set(f"source.{source}", current)
            progress.write()

    return app

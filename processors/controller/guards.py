"""The controller's guards of sources and the pipeline: rebalancing, back-off, health, resumes.

Decides from per-source windows (:class:`~processors.controller.state.SourceState`), the
in-memory pipeline health window and the folded ``ControlState``:

- every ``rebalance.every`` items of a source → ``source.weights_set`` when its weight moved
  (:class:`~processors.policies.sources.Rebalance`);
- every ``backoff_window`` items, a dead-letter rate over the bound → ``source.paused`` for a
  doubling back-off (:class:`~processors.policies.sources.ErrorBackoff`);
- every item: the pipeline health window → ``pipeline.paused``
  (:class:`~processors.policies.health.HealthPolicy`);
- a tick: ``source.resumed`` / ``pipeline.resumed`` when the controller's *own* pause has
  ended; an operator's pause is never lifted here.

Event times are the triggering record's (or the tick's), event ids
:func:`~processors.core.events.decision_id` of what each decision is about.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from processors.controller.config import ControllerConfig
from processors.controller.emit import ISSUER, Emit, decision_event
from processors.controller.state import SourceState
from processors.core.control import ControlState
from processors.core.events import EventType
from processors.policies.health import HealthObservation, HealthState
from processors.policies.sources import BackoffWindow, SourceWindow

__all__ = ["Guards"]


class Guards:
    """See the module docstring. ``health`` is the pipeline window (memory only)."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.health = HealthState()

    def source(
        self, src: SourceState, at: datetime, *, flagged: bool, error: bool, control: ControlState
    ) -> list[Emit]:
        """Account one item of ``src`` (a production score or a dead letter)."""
        cfg, emits = self.config, []
        src.items += 1
        src.flagged += int(flagged)
        src.errors += int(error)
        if src.items >= cfg.rebalance.every:
            window = SourceWindow(src.flagged, src.errors, src.items, src.weight)
            for weight in cfg.rebalance.update(window):
                emits.append(
                    Emit(
                        decision_event(
                            EventType.SOURCE_WEIGHTS_SET,
                            src.source,
                            {"weights": {src.source: weight}},
                            at=at,
                            parts=(src.source, src.rebalances),
                            evidence={
                                "items": float(src.items),
                                "flagged": float(src.flagged),
                                "errors": float(src.errors),
                                "previous": -1.0 if src.weight is None else src.weight,
                            },
                        )
                    )
                )
                src.weight = weight
            src.rebalances += 1
            src.items = src.flagged = src.errors = 0
        src.backoff_items += 1
        src.backoff_errors += int(error)
        if src.backoff_items >= cfg.backoff_window:
            items, errors = src.backoff_items, src.backoff_errors
            src.backoff_items = src.backoff_errors = 0
            pauses = cfg.backoff.update(BackoffWindow(errors, items, src.pauses))
            if pauses and not control.is_source_paused(src.source):
                pause_s = pauses[0]
                emits.append(
                    Emit(
                        decision_event(
                            EventType.SOURCE_PAUSED,
                            src.source,
                            {
                                "reason": f"dead-letter rate {errors / items:.2f}",
                                "until": at + timedelta(seconds=pause_s),
                            },
                            at=at,
                            parts=("backoff", src.source, src.pauses, src.rebalances, items),
                            evidence={
                                "error_rate": errors / items,
                                "items": float(items),
                                "pause_s": pause_s,
                                "consecutive_pauses": float(src.pauses + 1),
                            },
                        )
                    )
                )
                src.pauses += 1
            elif not pauses and not control.is_source_paused(src.source):
                src.pauses = 0
        return emits

    def pipeline(
        self, at: datetime, latency_ms: float | None, *, error: bool, control: ControlState
    ) -> list[Emit]:
        """Account one item of the pipeline (a served score with its latency, or an error)."""
        verdicts = self.config.health.update(HealthObservation(self.health, latency_ms, error))
        if not verdicts or control.pipeline_paused is not None:
            return []
        verdict = verdicts[0]
        return [
            Emit(
                decision_event(
                    EventType.PIPELINE_PAUSED,
                    "pipeline",
                    {"reason": verdict.reason, "until": at + timedelta(seconds=verdict.pause_s)},
                    at=at,
                    parts=("health", self.health.pauses, at.isoformat()),
                    evidence=verdict.evidence(),
                )
            )
        ]

    def tick(self, now: datetime, control: ControlState) -> list[Emit]:
        """Lift the controller's own pauses whose back-off has ended (never an operator's)."""
        emits = []
        for source, pause in sorted(control.paused_sources.items()):
            if pause.issued_by == ISSUER and pause.until is not None and now >= pause.until:
                emits.append(
                    Emit(
                        decision_event(
                            EventType.SOURCE_RESUMED,
                            source,
                            {"reason": "back-off ended"},
                            at=now,
                            parts=(pause.event_id,),
                            caused_by=[pause.event_id],
                        )
                    )
                )
        held = control.pipeline_paused
        if held is not None and held.issued_by == ISSUER and held.until and now >= held.until:
            self.config.health.resumed(self.health)
            emits.append(
                Emit(
                    decision_event(
                        EventType.PIPELINE_RESUMED,
                        "pipeline",
                        {"reason": "probation after health pause"},
                        at=now,
                        parts=(held.event_id,),
                        caused_by=[held.event_id],
                    )
                )
            )
        return emits

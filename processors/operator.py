"""``skyloop control``: operators emit the same control events the controller does.

An operator's event is an ordinary event on ``control.events`` (``issued_by`` =
``operator:<name>``), validated here and folded by every processor like any other, so the log
stays the complete audit trail. What each command emits:

=====================================  ==========================================================
``pause [--source S] [--for SECONDS]``  ``pipeline.paused`` (or ``source.paused`` for S), with
                                         ``until`` when ``--for`` is given (else until resumed)
``resume [--source S]``                  ``pipeline.resumed`` (or ``source.resumed``)
``threshold SOURCE VALUE``               ``threshold.set`` for every detector (``--detector`` for
                                         one; ``--model`` for one model, else whatever serves)
``recalibrate SOURCE``                   ``calibration.requested``: the controller recalibrates
                                         the source from its most recent images
``revise SOURCE``                        ``revision.requested``: the source's stream has ended
                                         (or the operator closes it), so a revision that waits
                                         for a score under its recalibration is made now
``weights SOURCE=W ...``                 ``source.weights_set`` (subject ``pipeline``: these
                                         weights replace all published ones)
``register VERSION --weights F``         ``model.registered`` (the CLI stores the weights and a
                                         model card first); the lifecycle then gates it
``promote VERSION``                      ``model.promoted``: only a version whose gate passed
``rollback VERSION``                     ``model.rolled_back``: out of shadow/canary, or
                                         production back to the version it replaced
=====================================  ==========================================================

:func:`operator_event` is pure (it builds and validates); the CLI emits the event to the broker
of the running pipeline and waits until the broker has it. Validation errors are
:class:`ConfigError` naming the argument and what is accepted. A source the log has never
mentioned is refused (a typo would otherwise do nothing, silently) unless ``force``.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from processors.core.control import ControlState, new_event
from processors.core.events import EventType
from processors.core.exceptions import ConfigError
from processors.core.fold_guard import refusal_reason
from processors.core.records import ControlEventRecord, ControlParams

__all__ = [
    "ACTIONS",
    "OperatorRequest",
    "check_new_version",
    "known_sources",
    "operator_event",
    "operator_name",
]

ACTIONS = (
    "pause",
    "resume",
    "threshold",
    "recalibrate",
    "revise",
    "weights",
    "register",
    "promote",
    "rollback",
)
DETECTORS = ("mahalanobis", "energy", "knn")


@dataclass(frozen=True)
class OperatorRequest:
    """What an operator asked for, as parsed from the command line."""

    action: str
    source: str | None = None
    value: float | None = None
    detector: str | None = None
    model: str | None = None
    reason: str | None = None
    duration_s: float | None = None
    weights: tuple[str, ...] = ()
    force: bool = False


def operator_name() -> str:
    """``operator:<SKYLOOP_OPERATOR or the login name>``: the ``issued_by`` of the events."""
    name = os.environ.get("SKYLOOP_OPERATOR")
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = "unknown"
    return f"operator:{name}"


def known_sources(state: ControlState) -> set[str]:
    """Sources the log has mentioned: calibrated, weighted, paused or asked about."""
    calibrated = {key.split("|", 1)[1] for key in state.calibrations}
    thresholded = {key.split("|", 1)[1] for key in state.source_thresholds}
    return (
        calibrated
        | thresholded
        | set(state.source_weights)
        | set(state.paused_sources)
        | set(state.calibration_requests)
    )


def _check_source(source: str | None, state: ControlState, force: bool, flag: str) -> str:
    if not source:
        raise ConfigError(f"{flag}: a source name is needed")
    known = known_sources(state)
    if source not in known and not force:
        listed = ", ".join(sorted(known)) or "none yet"
        raise ConfigError(
            f"{flag} {source!r}: the control log has never mentioned this source (known: "
            f"{listed}); check the name, or pass --force for a source not calibrated yet"
        )
    return source


def _weights(pairs: Sequence[str], state: ControlState, force: bool) -> dict[str, float]:
    if not pairs:
        raise ConfigError("weights: give at least one SOURCE=WEIGHT")
    weights: dict[str, float] = {}
    for pair in pairs:
        source, sep, raw = pair.partition("=")
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not sep or not source or not value >= 0.0:
            raise ConfigError(f"weights: {pair!r} is not SOURCE=WEIGHT with WEIGHT >= 0")
        weights[_check_source(source, state, force, "weights")] = value
    if sum(weights.values()) <= 0:
        raise ConfigError("weights: at least one weight must be > 0")
    return weights


def operator_event(
    request: OperatorRequest, state: ControlState, now: datetime | None = None
) -> ControlEventRecord:
    """The validated event for ``request``, given the folded log ``state`` (pure).

    Last of all, the event must pass the fold's own guard (:mod:`processors.core.fold_guard`):
    the CLI never appends an event every processor would refuse."""
    event = _operator_event(request, state, now)
    reason = refusal_reason(state, event)
    if reason is not None:
        raise ConfigError(f"{request.action}: the control fold would refuse this event: {reason}")
    return event


def _operator_event(
    request: OperatorRequest, state: ControlState, now: datetime | None
) -> ControlEventRecord:
    now = now or datetime.now(UTC)
    issuer = operator_name()
    reason = request.reason or f"{request.action} by {issuer}"
    action, source = request.action, request.source
    params: ControlParams = {"reason": reason}
    if action == "pause":
        if request.duration_s is not None:
            if not request.duration_s > 0:
                raise ConfigError(f"--for {request.duration_s}: must be > 0 seconds")
            params["until"] = now + timedelta(seconds=request.duration_s)
        if source is None:
            return new_event(EventType.PIPELINE_PAUSED, "pipeline", issuer, params, at=now)
        source = _check_source(source, state, request.force, "--source")
        return new_event(EventType.SOURCE_PAUSED, source, issuer, params, at=now)
    if action == "resume":
        if source is None:
            if state.pipeline_paused is None:
                raise ConfigError("resume: the pipeline is not paused")
            return new_event(EventType.PIPELINE_RESUMED, "pipeline", issuer, params, at=now)
        if source not in state.paused_sources:
            paused = ", ".join(sorted(state.paused_sources)) or "none"
            raise ConfigError(f"--source {source!r} is not paused (paused: {paused})")
        return new_event(EventType.SOURCE_RESUMED, source, issuer, params, at=now)
    if action == "threshold":
        source = _check_source(source, state, request.force, "threshold SOURCE")
        value = request.value
        if value is None or not 0.0 < value <= 1.0:
            raise ConfigError(
                f"threshold VALUE {value}: accepted values are calibrated scores in (0, 1]"
            )
        if request.detector is not None and request.detector not in DETECTORS:
            raise ConfigError(f"--detector {request.detector!r}: accepted: {', '.join(DETECTORS)}")
        detectors = [request.detector] if request.detector else list(DETECTORS)
        params["thresholds"] = dict.fromkeys(detectors, value)
        if request.model:
            params["model_version"] = request.model
        return new_event(EventType.THRESHOLD_SET, source, issuer, params, at=now)
    if action == "recalibrate":
        source = _check_source(source, state, request.force, "recalibrate SOURCE")
        return new_event(EventType.CALIBRATION_REQUESTED, source, issuer, params, at=now)
    if action == "revise":
        source = _check_source(source, state, request.force, "revise SOURCE")
        return new_event(EventType.REVISION_REQUESTED, source, issuer, params, at=now)
    if action == "weights":
        params["weights"] = _weights(request.weights, state, request.force)
        return new_event(EventType.SOURCE_WEIGHTS_SET, "pipeline", issuer, params, at=now)
    if action in ("promote", "rollback"):
        return _model_event(action, request.model, state, params, issuer, now)
    raise ConfigError(f"unknown action {action!r}; accepted: {', '.join(ACTIONS)}")


def check_new_version(version: str | None, state: ControlState) -> str:
    """A version name that ``register`` may use: non-empty, unused, no ``|``."""
    if not version or "|" in version or version.strip() != version:
        raise ConfigError(f"register VERSION {version!r}: a name without spaces or '|' is needed")
    if version in state.registered:
        raise ConfigError(f"register {version!r}: already registered (versions are immutable)")
    return version


def _model_event(
    action: str,
    version: str | None,
    state: ControlState,
    params: ControlParams,
    issuer: str,
    now: datetime,
) -> ControlEventRecord:
    slot = state.registered.get(version or "")
    if version is None or slot is None:
        known = ", ".join(sorted(state.registered)) or "none"
        raise ConfigError(f"{action} {version!r}: not a registered model (registered: {known})")
    params["model_version"] = version
    rollout = state.rollout(slot.kind)
    if action == "promote":
        gate = state.gates.get(version)
        if gate is not True:
            verdict = "failed" if gate is False else "not judged yet"
            raise ConfigError(
                f"promote {version!r}: its gate has {verdict}; only a gated model serves"
            )
        if rollout.role_of(version) == "production":
            raise ConfigError(f"promote {version!r}: already production")
        return new_event(EventType.MODEL_PROMOTED, version, issuer, params, at=now)
    role = rollout.role_of(version)
    if role is None:
        raise ConfigError(f"rollback {version!r}: not serving or in trial (no role to leave)")
    if role == "production" and rollout.replaced is None:
        raise ConfigError(
            f"rollback {version!r}: production, with no earlier version to go back to"
        )
    return new_event(EventType.MODEL_ROLLED_BACK, version, issuer, params, at=now)

"""The fold's guard: which ``control.events`` the fold refuses, and why.

Any local process can append to ``control.events``, and the log is replayed forever, so the
fold (:meth:`processors.core.control.ControlState.apply`) asks :func:`refusal_reason` before an
event changes anything. A refused event changes nothing but the refusal count and the bounded
list of the last refusals (:class:`Refusal`, ``REFUSALS_KEPT`` of them); the fold's ``offset``
still moves past it. The verdict depends only on the state before the event and the event
itself, so every fold of the same log (a processor's ``ControlFollower``, a replay, ``skyloop
models``) refuses the same events for the same reasons. The sink dead-letters each refused event
(error class ``RefusedEvent``) and still stores it in ``control_events``: the audit trail keeps
everything (ARCHITECTURE.md, "Event model").

Every known type is first checked for shape: ``event_id``, ``subject`` and ``issued_by`` are
strings; ``subject`` is a name (non-empty, at most ``MAX_NAME`` characters, no ``|``: state keys
are ``<model>|<source>``); ``caused_by`` is a list of strings and ``evidence`` a map of numbers;
the params have the types of ``ControlParams`` (strings, numbers, ``until`` a time with a zone,
``extra`` a map of strings); an artifact id (``artifact_id``, ``extra`` ``manifest``, ``card``,
``drift_profile``) is a sha256 digest; a model version is a name. Then the type's typed params
must have no :meth:`~processors.core.event_params.EventParams.problems` (finite, in range), and
the type's own rule holds:

==============================  ================================================================
type                            refused when (besides the checks above)
==============================  ================================================================
``threshold.*``                 it sets nothing (no ``thresholds``, and not both ``detector`` and
                                ``value``): an empty model-less override would still wipe the
                                source's per-model ones. Its ``model_version`` need not be
                                registered (the configured production model never is)
``calibration.updated``         no thresholds (it calibrates no detector, yet would wipe the
                                model's overrides for the source); ``vote_k`` above the number of
                                its thresholds (nothing could ever be flagged). A calibration
                                without ``model_version``, ``target_fpr`` or
                                ``artifact_id`` is accepted: logs written before calibrations
                                were per model hold them, and the fold has always read them
``source.weights_set``          no weights, a weight above ``MAX_WEIGHT``; subject ``pipeline``
                                with every weight 0; a source subject setting another source
``source.paused``,              (the checks above: ``until`` a time with a zone)
``pipeline.paused``
``retrain.requested``           (the checks above: ``extra.manifest`` present, an artifact id)
``model.registered``            the version is registered already with another kind, backbone or
                                weights (versions are immutable; the same registration again is
                                accepted and changes nothing)
``model.gate_passed``,          the version was never registered
``model.shadow_started``,
``model.canary_started``,
``model.promoted``,
``model.rolled_back``
==============================  ================================================================

Accepted because harmless: ``source.resumed`` of a source not paused and ``pipeline.resumed``
of a running pipeline (no-ops; an operator and the controller may both resume);
``model.gate_failed`` of a version never registered (the trainer answers a failed training
with a verdict whose subject is the request: no model exists); ``calibration.requested``,
``revision.requested``, ``drift.detected``, ``budget.deferred`` with any reason; and the
lifecycle steps the fold already ignores by rule (a canary or promotion whose gate has not
passed, see ``_fold_model``). A type this version does not know is not refused either: it is
counted and changes nothing, so an old processor survives a newer log. Behind the guard, the
fold turns a handler that raises into a refusal too (reason ``the fold raised ...``): no event
stops a fold.

Example:
    >>> from processors.core.events import new_event
    >>> class Empty:
    ...     registered = {}
    >>> bad = new_event("source.weights_set", "pipeline", "x", {"weights": {"sky": 1e300}})
    >>> refusal_reason(Empty(), bad)
    'weights[sky] 1e+300 is above 1e+06'
    >>> refusal_reason(Empty(), new_event("model.promoted", "v9", "x", {"model_version": "v9"}))
    "model.promoted of 'v9': not a registered version"
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from processors.core.event_params import params_problems
from processors.core.events import EVENT_TYPES, EventType
from processors.core.exceptions import SkyloopError
from processors.core.rollouts import ModelKind, ModelSlot

__all__ = [
    "MAX_NAME",
    "MAX_WEIGHT",
    "REFUSALS_KEPT",
    "RULES",
    "KnowsModels",
    "Refusal",
    "RefusedEvent",
    "refusal_of",
    "refusal_reason",
]

#: how many of the last refusals a state keeps (the count is exact, the list bounded)
REFUSALS_KEPT = 16
#: the largest source weight (weights are relative: larger only overflows sums)
MAX_WEIGHT = 1e6
#: the longest subject, source or model version
MAX_NAME = 200
_ARTIFACT = re.compile(r"^[0-9a-f]{64}$")
_STRINGS = ("detector", "model_version", "backbone", "artifact_id", "reason")
_NUMBERS = ("value", "target_fpr", "fraction")
_ARTIFACT_EXTRAS = ("manifest", "card", "drift_profile")
_REASON_CHARS = 500


class KnowsModels(Protocol):
    """What the rules read of the state: the registered model versions."""

    @property
    def registered(self) -> Mapping[str, ModelSlot]: ...


class RefusedEvent(SkyloopError):
    """The error class of a refused event's dead letter; the message is the reason."""


@dataclass(frozen=True)
class Refusal:
    """One refused event: where it was in the log, what it was, and why it was refused."""

    offset: int
    event_id: str
    type: str
    subject: str
    issued_by: str
    reason: str


def refusal_of(event: Mapping[str, Any], offset: int, reason: str) -> Refusal:
    """The :class:`Refusal` of ``event`` (fields that are not strings are shown as ``repr``)."""

    def text(key: str) -> str:
        value = event.get(key) if isinstance(event, Mapping) else None
        return value if isinstance(value, str) else repr(value)

    return Refusal(
        offset,
        text("event_id")[:MAX_NAME],
        text("type")[:MAX_NAME],
        text("subject")[:MAX_NAME],
        text("issued_by")[:MAX_NAME],
        reason[:_REASON_CHARS],
    )


def refusal_reason(state: KnowsModels, event: Mapping[str, Any]) -> str | None:
    """Why the fold refuses ``event`` in ``state``; None when it may be applied. Never raises."""
    try:
        found = _problems(state, event)
    except Exception as exc:  # any shape a hostile producer can make is a refusal, not a crash
        found = [f"malformed event: {type(exc).__name__}: {exc}"]
    return "; ".join(found)[:_REASON_CHARS] if found else None


def _problems(state: KnowsModels, event: Mapping[str, Any]) -> list[str]:
    kind = event["type"]
    if not isinstance(kind, str):
        return [f"type {kind!r} is not a string"]
    if kind not in EVENT_TYPES:
        return []  # a newer version's type: counted, changes nothing
    found = _envelope(event)
    if found:
        return found
    found = _param_types(event["params"])
    if found:
        return found
    found = params_problems(event)  # type: ignore[arg-type]
    if found:
        return found
    rule = RULES.get(EventType(kind))
    return rule(state, event, event["params"]) if rule is not None else []


def _name(what: str, value: object) -> list[str]:
    if not isinstance(value, str):
        return [f"{what} {value!r} is not a string"]
    if not value or len(value) > MAX_NAME or "|" in value or value.strip() != value:
        return [f"{what} {value[:MAX_NAME]!r} is not a name (1-{MAX_NAME} characters, no '|')"]
    return []


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _envelope(event: Mapping[str, Any]) -> list[str]:
    found = _name("subject", event["subject"])
    for key in ("event_id", "issued_by"):
        if not isinstance(event[key], str):
            found.append(f"{key} {event[key]!r} is not a string")
    caused = event["caused_by"]
    if not isinstance(caused, list) or not all(isinstance(c, str) for c in caused):
        found.append("caused_by is not a list of event ids")
    evidence = event["evidence"]
    if not isinstance(evidence, Mapping) or not all(
        isinstance(k, str) and _number(v) for k, v in evidence.items()
    ):
        found.append("evidence is not a map of names to numbers")
    if not isinstance(event["params"], Mapping):
        found.append("params is not a record")
    return found


def _param_types(p: Mapping[str, Any]) -> list[str]:
    found = [
        f"{key} {p[key]!r} is not a string"
        for key in _STRINGS
        if p.get(key) is not None and not isinstance(p[key], str)
    ]
    found += [
        f"{key} {p[key]!r} is not a number"
        for key in _NUMBERS
        if p.get(key) is not None and not _number(p[key])
    ]
    vote_k = p.get("vote_k")
    if vote_k is not None and (not isinstance(vote_k, int) or isinstance(vote_k, bool)):
        found.append(f"vote_k {vote_k!r} is not an integer")
    for key in ("thresholds", "weights"):
        values = p.get(key) or {}
        if not isinstance(values, Mapping) or not all(isinstance(k, str) for k in values):
            found.append(f"{key} is not a map of names to numbers")
    extra = p.get("extra") or {}
    if not isinstance(extra, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        return [*found, "extra is not a map of strings"]
    until = p.get("until")
    if until is not None and (not isinstance(until, datetime) or until.tzinfo is None):
        found.append(f"until {until!r} is not a time with a zone")
    if p.get("model_version"):
        found += _name("model_version", p["model_version"])
    ids = [("artifact_id", p.get("artifact_id"))]
    ids += [(f"extra.{key}", extra.get(key)) for key in _ARTIFACT_EXTRAS]
    found += [
        f"{what} {value[:80]!r} is not an artifact id (sha256)"
        for what, value in ids
        if isinstance(value, str) and not _ARTIFACT.match(value)
    ]
    return found


# -- the rules per type ------------------------------------------------------------------------
Rule = Callable[[KnowsModels, Mapping[str, Any], Mapping[str, Any]], list[str]]


def _threshold(_state: KnowsModels, _event: Mapping[str, Any], p: Mapping[str, Any]) -> list[str]:
    one = (p.get("detector") or None, p.get("value"))
    if (one[0] is None) != (one[1] is None):
        return ["detector and value go together"]
    if not p.get("thresholds") and one[0] is None:
        return ["sets no threshold (neither thresholds nor detector and value)"]
    return []


def _calibration(_state: KnowsModels, _event: Mapping[str, Any], p: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    thresholds = p.get("thresholds") or {}
    if not thresholds:
        return ["calibrates no detector (no thresholds)"]
    if (p.get("vote_k") or 1) > len(thresholds):
        found.append(f"vote_k {p.get('vote_k')} is above the {len(thresholds)} thresholds")
    return found


def _weights(_state: KnowsModels, event: Mapping[str, Any], p: Mapping[str, Any]) -> list[str]:
    weights: Mapping[str, float] = p.get("weights") or {}
    if not weights:
        return ["no weights"]
    found = [
        problem
        for name, weight in sorted(weights.items())
        for problem in _name("weights source", name)
        + ([f"weights[{name}] {weight:g} is above {MAX_WEIGHT:g}"] if weight > MAX_WEIGHT else [])
    ]
    subject = event["subject"]
    if subject == "pipeline" and not any(w > 0 for w in weights.values()):
        found.append("every weight is 0: no source would be ingested")
    elif subject != "pipeline" and set(weights) != {subject}:
        found.append(f"a weights event of source {subject!r} sets only that source's weight")
    return found


def _version(event: Mapping[str, Any], p: Mapping[str, Any]) -> str:
    return str(p.get("model_version") or event["subject"])


def _registration(state: KnowsModels, event: Mapping[str, Any], p: Mapping[str, Any]) -> list[str]:
    version = _version(event, p)
    known = state.registered.get(version)
    if known is None:
        return []
    kind: ModelKind = "detector" if (p.get("extra") or {}).get("kind") == "detector" else "scorer"
    again = ModelSlot(version, p.get("backbone"), p.get("artifact_id"), kind=kind)
    if again != known:
        return [f"{version!r} is registered already, otherwise (versions are immutable)"]
    return []


def _registered(state: KnowsModels, event: Mapping[str, Any], p: Mapping[str, Any]) -> list[str]:
    version = _version(event, p)
    if version not in state.registered:
        return [f"{event['type']} of {version!r}: not a registered version"]
    return []


#: event type -> its own rule (after the shape and typed-params checks); absent: none
RULES: Mapping[EventType, Rule] = {
    EventType.THRESHOLD_SET: _threshold,
    EventType.THRESHOLD_DECAYED: _threshold,
    EventType.CALIBRATION_UPDATED: _calibration,
    EventType.SOURCE_WEIGHTS_SET: _weights,
    EventType.MODEL_REGISTERED: _registration,
    EventType.MODEL_GATE_PASSED: _registered,
    EventType.MODEL_SHADOW_STARTED: _registered,
    EventType.MODEL_CANARY_STARTED: _registered,
    EventType.MODEL_PROMOTED: _registered,
    EventType.MODEL_ROLLED_BACK: _registered,
}

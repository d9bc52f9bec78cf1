"""The gate: whether a newly registered model may ever serve.

Pure (no I/O). :class:`ModelGate` compares a candidate model's measurements with production's:

- no NaN or infinite output at all (``nan_outputs == 0``);
- the 99th percentile of per-image latency at most ``max_latency_p99_ms`` (default 2000 ms) and
  at most ``max_latency_ratio`` (default 3.0) times production's when production's is known;
- an error rate (outputs that failed) at most ``max_error_rate`` (default 0.01);
- for detectors, a comparison *with power* against what serves now (the production detector,
  or source extraction before any) on the same held-out images: at least ``min_held_out``
  (default 30) of them, else the verdict *waits* (``waiting``: neither passed nor failed; the
  trainer says so with ``budget.deferred`` and judges again on a larger dataset); then the
  lower bound of the paired bootstrap interval of the mAP50 difference (challenger minus
  incumbent, :func:`processors.yolo.comparison.compare_map50`: ``map50_diff_low``) must be
  above 0, and the challenger's mAP50 at least ``min_map50`` (default 0.3) in any case.

A measurement that the rule needs and that is missing fails the gate with that reason: a gate
never passes by default. The verdict's ``evidence`` holds every measurement that was judged,
prefixed ``candidate_`` / ``production_``, for ``model.gate_passed`` / ``model.gate_failed``.

Example:
    >>> gate = ModelGate()
    >>> better = {"map50": 0.61, "latency_p99_ms": 40.0, "nan_outputs": 0.0,
    ...           "held_out_images": 120.0, "map50_diff_low": 0.04, "map50_diff_high": 0.2}
    >>> ok = gate.judge("detector", better, {"map50": 0.49, "latency_p99_ms": 35.0})
    >>> ok.passed, ok.reasons
    (True, [])
    >>> noise = gate.judge("detector", {**better, "map50_diff_low": -0.01}, {"map50": 0.49})
    >>> noise.passed, noise.reasons[0].split(": ")[1]
    (False, '95 % interval of the difference [-0.010, 0.200] not above 0')
    >>> few = gate.judge("detector", {**better, "held_out_images": 5.0}, {"map50": 0.49})
    >>> few.passed, few.waiting, few.reasons
    (False, True, ['5 held-out images < 30 needed: the gate waits for more'])
    >>> [v.passed for v in gate.update(GateObservation("scorer", {"latency_p99_ms": 9.0}))]
    [False]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["GateObservation", "GateVerdict", "ModelGate"]


@dataclass(frozen=True)
class GateObservation:
    """A candidate's measurements (``kind`` scorer or detector) and production's, if known."""

    kind: str
    candidate: Mapping[str, float]
    production: Mapping[str, float] | None = None


@dataclass(frozen=True)
class GateVerdict:
    """``waiting``: a detector with too few held-out images, judged neither way (not passed)."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, float] = field(default_factory=dict)
    waiting: bool = False

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "all checks passed"


@dataclass(frozen=True)
class ModelGate:
    min_map50: float = 0.3
    min_held_out: int = 30
    level: float = 0.95
    max_latency_p99_ms: float = 2000.0
    max_latency_ratio: float = 3.0
    max_error_rate: float = 0.01

    def update(self, observation: GateObservation) -> list[GateVerdict]:
        """Exactly one verdict, passed or not (see :meth:`judge`)."""
        o = observation
        return [self.judge(o.kind, o.candidate, o.production)]

    def judge(
        self,
        kind: str,
        candidate: Mapping[str, float],
        production: Mapping[str, float] | None = None,
    ) -> GateVerdict:
        """The verdict on ``candidate``'s measurements against ``production``'s (may be empty)."""
        production = production or {}
        reasons: list[str] = []
        nan = candidate.get("nan_outputs")
        if nan is None:
            reasons.append("nan_outputs not measured")
        elif nan > 0 or not math.isfinite(nan):
            reasons.append(f"{nan:.0f} NaN outputs")
        latency = candidate.get("latency_p99_ms")
        if latency is None or not math.isfinite(latency):
            reasons.append("latency_p99_ms not measured")
        else:
            if latency > self.max_latency_p99_ms:
                reasons.append(f"p99 latency {latency:.1f} ms > {self.max_latency_p99_ms:.0f} ms")
            base = production.get("latency_p99_ms")
            if base is not None and base > 0 and latency > self.max_latency_ratio * base:
                reasons.append(
                    f"p99 latency {latency:.1f} ms > {self.max_latency_ratio:g} x production "
                    f"{base:.1f} ms"
                )
        errors = candidate.get("error_rate", 0.0)
        if errors > self.max_error_rate:
            reasons.append(f"error rate {errors:.3f} > {self.max_error_rate}")
        waiting = False
        if kind == "detector":
            waiting = self._judge_detector(candidate, production, reasons)
        evidence = {f"candidate_{k}": float(v) for k, v in candidate.items()}
        evidence |= {f"production_{k}": float(v) for k, v in production.items()}
        if waiting:
            return GateVerdict(False, reasons[-1:], evidence, waiting=True)
        return GateVerdict(not reasons, reasons, evidence)

    def _judge_detector(
        self, candidate: Mapping[str, float], incumbent: Mapping[str, float], reasons: list[str]
    ) -> bool:
        """Append the detector rule's reasons; True when the gate must wait for more images."""
        held = candidate.get("held_out_images")
        if held is None or not math.isfinite(held) or held < self.min_held_out:
            shown = "no" if held is None else f"{held:.0f}"
            reasons.append(
                f"{shown} held-out images < {self.min_held_out} needed: the gate waits for more"
            )
            return True
        score, low = candidate.get("map50"), candidate.get("map50_diff_low")
        if score is None or not math.isfinite(score):
            reasons.append("map50 not measured")
        elif score < self.min_map50:
            reasons.append(f"map50 {score:.3f} < {self.min_map50:g}")
        if low is None or not math.isfinite(low):
            reasons.append("map50 interval against the incumbent not measured")
        elif not low > 0:
            high = candidate.get("map50_diff_high", float("nan"))
            reasons.append(
                f"map50 {float('nan') if score is None else score:.3f} vs incumbent "
                f"{incumbent.get('map50', float('nan')):.3f}: {self.level * 100:g} % interval of "
                f"the difference [{low:.3f}, {high:.3f}] not above 0"
            )
        return False

"""The gate: whether a newly registered model may ever serve.

Pure (no I/O). :class:`ModelGate` compares a candidate model's measurements with production's:

- no NaN or infinite output at all (``nan_outputs == 0``);
- the 99th percentile of per-image latency at most ``max_latency_p99_ms`` (default 2000 ms) and
  at most ``max_latency_ratio`` (default 3.0) times production's when production's is known;
- for detectors, ``map50`` on the held-out set not below production's minus
  ``map50_tolerance`` (default 0.02); a first detector (no production detector yet) needs at
  least ``min_map50`` (default 0.3): the held-out boxes are the baseline's own (source
  extraction makes the pseudo-labels), so comparing with the baseline would be circular;
- an error rate (outputs that failed) at most ``max_error_rate`` (default 0.01).

A measurement that the rule needs and that is missing fails the gate with that reason: a gate
never passes by default. The verdict's ``evidence`` holds every measurement that was judged,
prefixed ``candidate_`` / ``production_``, for ``model.gate_passed`` / ``model.gate_failed``.

Example:
    >>> gate = ModelGate()
    >>> ok = gate.judge("detector", {"map50": 0.61, "latency_p99_ms": 40.0, "nan_outputs": 0.0},
    ...                 {"map50": 0.60, "latency_p99_ms": 35.0})
    >>> ok.passed, ok.reasons
    (True, [])
    >>> bad = gate.judge("detector", {"map50": 0.2, "latency_p99_ms": 40.0, "nan_outputs": 3.0},
    ...                  {"map50": 0.6})
    >>> bad.passed, bad.reasons
    (False, ['3 NaN outputs', 'map50 0.200 < production 0.600 - 0.02'])
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
    passed: bool
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, float] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "all checks passed"


@dataclass(frozen=True)
class ModelGate:
    map50_tolerance: float = 0.02
    min_map50: float = 0.3
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
        if kind == "detector":
            score = candidate.get("map50")
            if score is None or not math.isfinite(score):
                reasons.append("map50 not measured")
            else:
                floor = production.get("map50")
                if floor is not None and score < floor - self.map50_tolerance:
                    reasons.append(
                        f"map50 {score:.3f} < production {floor:.3f} - {self.map50_tolerance:g}"
                    )
                elif floor is None and score < self.min_map50:
                    reasons.append(f"map50 {score:.3f} < {self.min_map50:g} (first detector)")
        evidence = {f"candidate_{k}": float(v) for k, v in candidate.items()}
        evidence |= {f"production_{k}": float(v) for k, v in production.items()}
        return GateVerdict(not reasons, reasons, evidence)

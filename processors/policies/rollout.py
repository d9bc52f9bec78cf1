"""Rollout: trial → shadow → canary → promote, or rollback, judged on a model's own outputs.

Pure (no I/O, no clock). One :class:`RolloutTrack` per model version under rollout holds what
the policy has seen of it; :class:`RolloutPolicy` turns it into the next lifecycle step.

Phases, in order (``phase`` in the track):

- ``trial`` (scoring models only): a registered scorer runs as a shadow, never served, and its
  gate is judged by :class:`~processors.policies.gate.ModelGate` on its first ``trial_outputs``
  (default 64) outputs: NaN outputs, p99 latency against production's. A detector's gate is
  judged by the trainer on the held-out set instead, so detectors start in ``shadow``.
- ``shadow``: ``shadow_outputs`` (default 64) more outputs without a NaN → ``canary`` at
  ``canary_fraction`` (default 0.2) of the images (by hash of image id).
- ``canary``: every ``health_window`` (default 32) canary outputs are judged against
  production's outputs of the same period: any NaN, p99 latency over ``max_latency_ratio``
  (default 3) times production's, and then by kind:

  - a **scoring model** must behave like production (a scrambled scorer's outputs are finite
    but meaningless): a two-sample KS test of the outputs with p below ``ks_p`` (default
    0.001), or, its outputs paired (production also scored the canary's images), a Spearman
    rank correlation below ``min_agreement`` (default 0.3) → rollback; ``canary_outputs``
    (default 256) healthy outputs → ``promote``;
  - a **detector** is meant to improve, so to differ: KS and agreement are evidence only (on
    the learning bench a detector 30 times better on held-out truth was rolled back for a KS
    p of 0.0005). Its verdict is quality: boxes that are invalid (non-finite, empty, a
    confidence outside [0, 1]) → rollback; on the canary's own traffic, the pseudo-labels
    that arrive meanwhile (new images, seen by neither model) compare its boxes with
    production's on the same images (``quality``, measured by the caller: the paired
    bootstrap of the mAP50 difference). Once ``min_labels`` (default 30) are in, an
    interval entirely below 0 → rollback at once; at ``canary_outputs`` healthy outputs a
    difference at least 0 → ``promote``, below 0 → ``rollback``. Too few labels: the canary
    goes on until ``max_canary_factor`` (default 4) times ``canary_outputs`` outputs, then the
    same rule on what there is (no label at all: the gate's held-out comparison stands).

  One failing window → ``rollback`` at once (a bad model must not serve for long).

Example:
    >>> import numpy as np
    >>> policy = RolloutPolicy(trial_outputs=4, shadow_outputs=4, health_window=8,
    ...                        canary_outputs=16)
    >>> track = RolloutTrack(version="v2", kind="scorer", phase="trial")
    >>> for _ in range(4):
    ...     policy.observe(track, 0.5, latency_ms=10.0)
    ...     policy.observe_production(track, 0.5, latency_ms=10.0)
    >>> [d.step for d in policy.update(track)]
    ['gate_passed']
    >>> track.reset("canary")
    >>> rng = np.random.default_rng(0)
    >>> for x in rng.uniform(size=8):  # a canary that ranks images against production's order
    ...     policy.observe(track, float(x), 10.0, paired=1.0 - float(x))
    ...     policy.observe_production(track, float(rng.uniform()), 10.0)
    >>> decision = policy.decide(track)
    >>> decision.step, decision.reason.split(" ")[0]
    ('rollback', 'agreement')
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy import stats

from processors.policies.gate import ModelGate

__all__ = ["RolloutDecision", "RolloutPolicy", "RolloutTrack"]

Phase = Literal["trial", "shadow", "canary", "done"]
Step = Literal["gate_passed", "gate_failed", "canary", "promote", "rollback"]
KEEP = 512  # bounded samples per series
KEEP_LABELLED = 256  # bounded labelled canary images (detectors)
QUALITY_KEYS = ("images", "canary_map50", "production_map50", "diff", "low", "high")


@dataclass
class RolloutTrack:
    """What the policy has seen of one version in its current phase (JSON-serialisable)."""

    version: str
    kind: str
    phase: Phase
    outputs: int = 0
    nan: int = 0
    latencies: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    paired: list[float] = field(default_factory=list)
    production_values: list[float] = field(default_factory=list)
    production_latencies: list[float] = field(default_factory=list)
    healthy: int = 0
    first_output_at: str | None = None
    invalid: int = 0  # detectors: outputs with an invalid box
    # detectors: per labelled canary image, [canary, production, label] boxes as
    # [x1, y1, x2, y2, confidence] rows (at most KEEP_LABELLED, the most recent)
    labelled: list[list[list[list[float]]]] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)  # measured on ``labelled``

    def reset(self, phase: Phase) -> None:
        self.phase = phase
        self.outputs = self.nan = self.healthy = self.invalid = 0
        self.latencies, self.values, self.paired = [], [], []
        self.production_values, self.production_latencies = [], []
        self.first_output_at = None
        self.labelled, self.quality = [], {}

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RolloutTrack:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class RolloutDecision:
    step: Step
    reason: str
    evidence: dict[str, float]


def _push(series: list[float], value: float) -> None:
    series.append(value)
    if len(series) > KEEP:
        del series[: len(series) - KEEP]


def _p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


@dataclass(frozen=True)
class RolloutPolicy:
    trial_outputs: int = 64
    shadow_outputs: int = 64
    canary_fraction: float = 0.2
    canary_outputs: int = 256
    health_window: int = 32
    max_latency_ratio: float = 3.0
    ks_p: float = 0.001
    min_agreement: float = 0.3
    min_labels: int = 30
    max_canary_factor: int = 4
    gate: ModelGate = field(default_factory=ModelGate)

    def observe(
        self,
        track: RolloutTrack,
        value: float,
        latency_ms: float,
        paired: float | None = None,
        invalid: bool = False,
    ) -> None:
        """One output of the version under rollout; ``paired``: production's on the same image;
        ``invalid``: the output holds an invalid box (detectors)."""
        track.outputs += 1
        track.invalid += int(invalid)
        if not math.isfinite(value) or not math.isfinite(latency_ms):
            track.nan += 1
            return
        _push(track.values, value)
        _push(track.latencies, latency_ms)
        if paired is not None and math.isfinite(paired):
            _push(track.paired, paired)
        elif track.paired:  # pairs stay aligned with values: an unpaired output drops them
            track.paired = []

    def observe_labelled(
        self,
        track: RolloutTrack,
        canary: list[list[float]],
        production: list[list[float]],
        label: list[list[float]],
    ) -> None:
        """A canary-served image that became a pseudo-label: both models' boxes and its own."""
        track.labelled.append([canary, production, label])
        del track.labelled[: max(0, len(track.labelled) - KEEP_LABELLED)]

    def observe_production(self, track: RolloutTrack, value: float, latency_ms: float) -> None:
        if math.isfinite(value) and math.isfinite(latency_ms):
            _push(track.production_values, value)
            _push(track.production_latencies, latency_ms)

    def update(self, track: RolloutTrack) -> list[RolloutDecision]:
        """The next step for the track (its outputs so far), or nothing yet.

        :meth:`decide`; when nothing is decided, the canary outputs judged so far are marked
        healthy (:meth:`window_judged`), so each window is judged once.
        """
        decision = self.decide(track)
        if decision is None:
            self.window_judged(track)
            return []
        return [decision]

    def decide(self, track: RolloutTrack) -> RolloutDecision | None:
        """The next step for ``track``, or None to keep watching. Does not change the track."""
        if track.phase == "trial" and track.outputs >= self.trial_outputs:
            verdict = self.gate.judge(
                track.kind,
                {
                    "nan_outputs": float(track.nan),
                    "latency_p99_ms": _p99(track.latencies),
                    "outputs": float(track.outputs),
                },
                {"latency_p99_ms": _p99(track.production_latencies)}
                if track.production_latencies
                else {},
            )
            step: Step = "gate_passed" if verdict.passed else "gate_failed"
            return RolloutDecision(step, verdict.reason, verdict.evidence)
        if track.phase == "shadow":
            if track.nan:
                return RolloutDecision("rollback", f"{track.nan} NaN outputs in shadow", {})
            if track.invalid:
                reason = f"{track.invalid} outputs with invalid boxes in shadow"
                return RolloutDecision("rollback", reason, {})
            if track.outputs >= self.shadow_outputs:
                return RolloutDecision(
                    "canary", "healthy in shadow", {"shadow_outputs": float(track.outputs)}
                )
        if track.phase == "canary" and track.outputs - track.healthy >= self.health_window:
            failure = self._unhealthy(track)
            if failure is not None:
                return failure
            if track.outputs >= self.canary_outputs:
                if track.kind == "detector":
                    return self._detector_verdict(track)
                return RolloutDecision("promote", "healthy in canary", self._evidence(track))
        return None

    def _detector_verdict(self, track: RolloutTrack) -> RolloutDecision | None:
        """Promote or roll back a healthy detector canary on its quality (see the module
        docstring); None while it waits for pseudo-labels."""
        q, evidence = track.quality, self._evidence(track)
        n = int(q.get("images", 0))
        if n < self.min_labels and track.outputs < self.max_canary_factor * self.canary_outputs:
            return None
        if n == 0:
            reason = f"no canary pseudo-label in {track.outputs} outputs: the gate's comparison"
            return RolloutDecision("promote", reason + " stands", evidence)
        text = (
            f"mAP50 {q['canary_map50']:.3f} vs production {q['production_map50']:.3f} on "
            f"{n} canary pseudo-labels, difference {q['diff']:+.3f} "
            f"[{q['low']:.3f}, {q['high']:.3f}]"
        )
        if q["diff"] >= 0:
            return RolloutDecision("promote", f"quality in canary: {text}", evidence)
        return RolloutDecision("rollback", f"worse than production in canary: {text}", evidence)

    def window_judged(self, track: RolloutTrack) -> None:
        """Mark the canary outputs so far as judged healthy (after a ``None`` decision)."""
        if track.phase == "canary" and track.outputs - track.healthy >= self.health_window:
            track.healthy = track.outputs

    def _evidence(self, track: RolloutTrack) -> dict[str, float]:
        evidence = {
            "outputs": float(track.outputs),
            "nan_outputs": float(track.nan),
            "latency_p99_ms": _p99(track.latencies),
            "production_latency_p99_ms": _p99(track.production_latencies),
        }
        if len(track.values) >= 8 and len(track.production_values) >= 8:
            evidence["ks_p"] = float(stats.ks_2samp(track.values, track.production_values).pvalue)
        if len(track.paired) >= 8 and len(track.paired) == len(track.values):
            rho = stats.spearmanr(track.values, track.paired).statistic
            evidence["agreement"] = float(rho) if math.isfinite(rho) else 0.0
        if track.kind == "detector":
            evidence["invalid_outputs"] = float(track.invalid)
            evidence |= {f"canary_quality_{k}": float(track.quality[k]) for k in track.quality}
        return {k: v for k, v in evidence.items() if math.isfinite(v)}

    def _unhealthy(self, track: RolloutTrack) -> RolloutDecision | None:
        evidence = self._evidence(track)
        if track.nan:
            return RolloutDecision("rollback", f"{track.nan} NaN outputs in canary", evidence)
        latency, base = evidence.get("latency_p99_ms"), evidence.get("production_latency_p99_ms")
        if latency is not None and base and latency > self.max_latency_ratio * base:
            reason = f"p99 latency {latency:.1f} ms > {self.max_latency_ratio:g} x {base:.1f} ms"
            return RolloutDecision("rollback", reason, evidence)
        if track.kind == "detector":
            return self._worse_detector(track, evidence)
        if evidence.get("ks_p", 1.0) < self.ks_p:
            reason = f"outputs differ from production (KS p={evidence['ks_p']:.2g})"
            return RolloutDecision("rollback", reason, evidence)
        if evidence.get("agreement", 1.0) < self.min_agreement:
            reason = f"agreement with production {evidence['agreement']:.2f} < {self.min_agreement}"
            return RolloutDecision("rollback", reason, evidence)
        return None

    def _worse_detector(
        self, track: RolloutTrack, evidence: dict[str, float]
    ) -> RolloutDecision | None:
        if track.invalid:
            return RolloutDecision(
                "rollback", f"{track.invalid} outputs with invalid boxes", evidence
            )
        q = track.quality
        if q.get("images", 0) >= self.min_labels and q["high"] < 0:
            reason = (
                f"worse than production in canary: mAP50 {q['canary_map50']:.3f} vs "
                f"{q['production_map50']:.3f} on {q['images']:.0f} canary pseudo-labels, "
                f"difference interval [{q['low']:.3f}, {q['high']:.3f}] below 0"
            )
            return RolloutDecision("rollback", reason, evidence)
        return None

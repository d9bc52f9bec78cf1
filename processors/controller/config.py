"""The controller's policy parameters, and how the settings map onto them.

Invariant: :meth:`ControllerConfig.from_settings` reads the settings and nothing else; the
policy named by ``policy`` is looked up in :mod:`processors.policies.plugins` by the controller,
so this module knows no policy by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from processors.core.config import Settings
from processors.policies.decay import ThresholdDecay
from processors.policies.drift import DriftTests
from processors.policies.health import HealthPolicy
from processors.policies.sequential import SequentialTest
from processors.policies.sources import ErrorBackoff, Rebalance

__all__ = ["ControllerConfig"]


@dataclass(frozen=True)
class ControllerConfig:
    """Policy parameters; :meth:`from_settings` maps the typed settings onto them.

    ``policy``: the lane policy's registered name (the ``control_policy`` setting);
    ``sequential``: the CUSUMs' parameters, None to judge windows only; ``threshold_rule``:
    a drift recalibration's (the others take ``nearest``).
    """

    policy: str = "skyloop"
    reference_size: int = 128
    reference_max_size: int = 1024
    target_fpr: float = 0.05
    vote_k: int = 2
    max_trim: float = 0.1
    threshold_rule: str = "conformal"
    drift_window: int = 64
    drift_min_reference: int = 64
    drift_step: int = 16
    drift_consecutive: int = 2
    drift_tests: DriftTests = field(default_factory=DriftTests)
    revise: bool = True
    sequential: SequentialTest | None = field(default_factory=SequentialTest)
    decay: ThresholdDecay = field(default_factory=ThresholdDecay)
    rebalance: Rebalance = field(default_factory=Rebalance)
    backoff: ErrorBackoff = field(default_factory=ErrorBackoff)
    backoff_window: int = 64
    health: HealthPolicy = field(default_factory=HealthPolicy)

    @property
    def ring_capacity(self) -> int:
        return max(self.reference_size, self.reference_max_size)

    @classmethod
    def from_settings(cls, s: Settings) -> ControllerConfig:
        return cls(
            policy=s.control_policy,
            reference_size=s.calibration.reference_size,
            reference_max_size=max(s.calibration.reference_max_size, s.calibration.reference_size),
            target_fpr=s.calibration.target_fpr,
            vote_k=s.calibration.vote_k,
            max_trim=s.calibration.max_trim,
            threshold_rule=s.calibration.threshold_rule,
            drift_window=s.drift.window,
            drift_min_reference=s.drift.min_reference,
            drift_step=s.drift.step,
            drift_consecutive=s.drift.consecutive,
            revise=s.drift.revise,
            drift_tests=DriftTests(
                ks_p=s.drift.ks_p,
                psi_min=s.drift.psi_min,
                feature_p=s.drift.feature_p,
                flag_p=s.drift.flag_p,
            ),
            sequential=(
                SequentialTest(
                    k=s.drift.sequential_k,
                    arl=s.drift.sequential_arl,
                    horizon=s.drift.sequential_horizon,
                    feature_k=s.drift.sequential_feature_k,
                )
                if s.drift.sequential
                else None
            ),
            decay=ThresholdDecay(
                decay=s.decay.rate,
                floor=s.decay.floor,
                ceiling=s.decay.ceiling,
                every=s.decay.every,
            ),
            rebalance=Rebalance(every=s.sources.rebalance_every),
            backoff=ErrorBackoff(
                max_error_rate=s.sources.backoff_max_error_rate,
                base_s=s.sources.backoff_base_s,
                max_s=s.sources.backoff_max_s,
            ),
            backoff_window=s.sources.backoff_window,
            health=HealthPolicy(
                window=s.health.window,
                max_error_rate=s.health.max_error_rate,
                max_latency_p99_ms=s.health.max_latency_p99_ms,
                consecutive=s.health.consecutive,
                pause_s=s.health.pause_s,
                max_pause_s=s.health.max_pause_s,
            ),
        )

"""Sections of scoring and self-correction: the scorer's backbone, the OOD maths, calibration,
drift, threshold decay, source weights and back-off, pipeline health and model rollouts.

Every section is frozen and refuses unknown keys. Messages of rules across fields name the
flat keys, e.g. ``drift_step (32) must be <= drift_window``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from processors.core.config.sections_io import Section

__all__ = [
    "CalibrationSettings",
    "DecaySettings",
    "DriftSettings",
    "HealthSettings",
    "OodSettings",
    "RolloutSettings",
    "ScoreSettings",
    "SourcesSettings",
]


class ScoreSettings(Section):
    """The scorer: its backbone, torch, chunked batches, how long it waits for a calibration."""

    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    allow_random_weights: bool = False
    image_size: int = Field(default=224, ge=32, le=1024)
    torch_threads: int | None = Field(default=None, ge=1)
    torch_compile: bool = Field(
        default=False,
        description="torch.compile the backbone forward pass (needs a C++ compiler on CPU)",
    )
    prepared_backbone: bool = Field(
        default=True,
        description=(
            "load the float32 CPU backbone as a prepared graph when one exists (built and "
            "stored by the first scorer; no timm import: ready sooner, about 125 MB smaller)"
        ),
    )
    chunks: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "split each scoring batch into this many chunks; chunk k+1 is decoded and "
            "preprocessed on a worker thread while the model runs chunk k (1 = no overlap)"
        ),
    )
    calibration_wait_s: float = Field(
        default=120.0, ge=0, description="scorer wait for a calibration"
    )
    max_control_lag: int = Field(
        default=256,
        ge=0,
        description=(
            "the scorer waits before a batch while the controller has this many more scores "
            "to read, so a correction acts within about this many images of its evidence "
            "(0: never waits)"
        ),
    )
    control_stall_s: float = Field(
        default=10.0,
        gt=0,
        description="a controller whose position has not moved for this long is not waited for",
    )


class OodSettings(Section):
    """The OOD ensemble maths of the scorer."""

    threads: int = Field(
        default=1,
        ge=1,
        description=(
            "BLAS threads for the scorer's OOD maths (numpy, scipy, faiss); small matrices, so "
            "more threads mostly spin against the backbone's own"
        ),
    )


class CalibrationSettings(Section):
    """Calibration windows and the decision rule (k of 3 detectors at a target FPR)."""

    reference_size: int = Field(
        default=128, ge=20, description="images in the calibration reference window"
    )
    target_fpr: float = Field(default=0.05, gt=0.0, le=0.5)
    vote_k: int = Field(default=2, ge=1, le=3, description="detectors that must agree (k of 3)")
    reference_max_size: int = Field(
        default=1024,
        ge=20,
        description=(
            "a calibration is refined on twice its window while its source stays stable, up to "
            "this many images (the controller's ring per model and source holds as many; "
            "below reference_size it means no refinement)"
        ),
    )
    max_trim: float = Field(
        default=0.1, ge=0.0, le=0.5, description="at most this share of a window trimmed as far-out"
    )
    threshold_rule: Literal["conformal", "nearest"] = Field(
        default="conformal",
        description=(
            "a drift recalibration's thresholds; conformal: a flag rate within target_fpr "
            "+- 1/(n+1) on new images; nearest: the in-sample rate nearest the target (as "
            "every other calibration)"
        ),
    )


class DriftSettings(Section):
    """Drift tests over score and feature windows (invariant: step <= window)."""

    window: int = Field(default=64, ge=16, description="images per drift test window")
    min_reference: int = Field(
        default=64, ge=20, description="post-drift images enough for a first recalibration"
    )
    step: int = Field(default=16, ge=1, description="a window is judged every this many images")
    consecutive: int = Field(default=2, ge=1, description="disjoint disagreeing windows for drift")
    ks_p: float = Field(default=0.002, gt=0.0, lt=1.0, description="KS p-value bound (scores)")
    psi_min: float = Field(default=0.1, ge=0.0, description="PSI above its noise, with KS")
    feature_p: float = Field(
        default=0.002, gt=0.0, lt=1.0, description="KS p bound on feature projections (Bonferroni)"
    )
    flag_p: float = Field(default=0.002, gt=0.0, lt=1.0, description="binomial flag-rate bound")
    sequential: bool = Field(default=True, description="two CUSUMs on per-image p-values")
    sequential_k: float = Field(
        default=0.75, gt=0.0, description="CUSUM allowance, in standard deviations of z"
    )
    sequential_arl: float = Field(
        default=1e6, gt=1.0, description="stationary run length the CUSUM threshold is set for"
    )
    sequential_horizon: int = Field(
        default=4096, ge=16, description="images per epoch the run length is simulated over"
    )
    sequential_feature_k: float = Field(
        default=1.0, ge=0.0, description="feature projections' CUSUM allowance (0: off)"
    )
    revise: bool = Field(
        default=True,
        description=(
            "after a drift's recalibration, and again at its first refinement, decide the "
            "images served since the change point again under it (scores.revised, a "
            "decisions.revised event)"
        ),
    )

    @model_validator(mode="after")
    def _step_within_window(self) -> DriftSettings:
        if self.step > self.window:
            raise ValueError(f"drift_step ({self.step}) must be <= drift_window")
        return self


class DecaySettings(Section):
    """Threshold decay between recalibrations (invariant: floor <= ceiling)."""

    rate: float = Field(default=0.002, ge=0.0, lt=1.0, description="t = base(1 - d ln(1+n))")
    every: int = Field(default=256, ge=1, description="images between decay events")
    floor: float = Field(default=0.5, ge=0.0, le=1.0)
    ceiling: float = Field(default=1.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _floor_below_ceiling(self) -> DecaySettings:
        if self.floor > self.ceiling:
            raise ValueError("threshold_floor must be <= threshold_ceiling")
        return self


class SourcesSettings(Section):
    """Per-source draw weights and error back-off of ingest's sources."""

    rebalance_every: int = Field(default=512, ge=1, description="items per source between weights")
    weight_floor: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="least share of draws of an active source"
    )
    backoff_window: int = Field(
        default=64, ge=1, description="items per source per error-rate check"
    )
    backoff_max_error_rate: float = Field(default=0.2, gt=0.0, lt=1.0)
    backoff_base_s: float = Field(default=30.0, gt=0.0)
    backoff_max_s: float = Field(default=3600.0, gt=0.0)


class HealthSettings(Section):
    """Pipeline health windows and pauses, and the lanes' tumbling stats window."""

    window: int = Field(default=256, ge=1, description="items per pipeline health window")
    max_error_rate: float = Field(default=0.5, gt=0.0, le=1.0)
    max_latency_p99_ms: float = Field(default=5000.0, gt=0.0)
    consecutive: int = Field(default=3, ge=1)
    pause_s: float = Field(default=60.0, gt=0.0)
    max_pause_s: float = Field(default=3600.0, gt=0.0)
    stats_window_s: float = Field(default=60.0, gt=0.0, description="tumbling window of lane stats")


class RolloutSettings(Section):
    """A new model's trial, shadow, canary and gate (see processors/controller/lifecycle.py)."""

    trial_outputs: int = Field(
        default=64, ge=1, description="a new scoring model's shadow outputs judged by its gate"
    )
    shadow_outputs: int = Field(default=64, ge=1, description="healthy shadow outputs → canary")
    canary_fraction: float = Field(
        default=0.2, gt=0.0, le=1.0, description="canary share of images"
    )
    canary_outputs: int = Field(default=256, ge=1, description="healthy canary outputs → promotion")
    canary_health_window: int = Field(
        default=32,
        ge=4,
        description="canary outputs per health judgement (one bad window: rollback)",
    )
    canary_max_latency_ratio: float = Field(default=3.0, gt=1.0, description="p99 vs production's")
    canary_ks_p: float = Field(
        default=0.001, gt=0.0, lt=1.0, description="KS p bound vs production"
    )
    canary_min_agreement: float = Field(
        default=0.3,
        ge=-1.0,
        le=1.0,
        description="scorers: Spearman rho with production, same images",
    )
    canary_min_labels: int = Field(
        default=30,
        ge=4,
        description="detectors: canary-served pseudo-labels before its quality is judged",
    )
    gate_map50_tolerance: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="no longer read (the gate compares on a bootstrap interval); kept so "
        "existing configurations load",
    )
    gate_min_map50: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="held-out mAP50 any detector needs to pass its gate",
    )
    gate_max_latency_p99_ms: float = Field(default=2000.0, gt=0.0)
    gate_min_held_out: int = Field(
        default=30,
        ge=2,
        description="held-out images a detector is judged on; fewer: the gate waits",
    )
    gate_interval_level: float = Field(
        default=0.95,
        gt=0.5,
        lt=1.0,
        description="two-sided level of the paired bootstrap interval of the mAP50 difference",
    )
    gate_bootstrap_resamples: int = Field(
        default=1000, ge=100, description="paired bootstrap resamples of the held-out images"
    )
    gate_bootstrap_seed: int = Field(
        default=0, ge=0, description="seed of the bootstrap (the verdict is deterministic)"
    )

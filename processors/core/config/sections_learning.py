"""Sections of the learning loop: pseudo-labels and their dataset, the retrain trigger, the
trainer, and the catalog cross-match of candidates.

Every section is frozen and refuses unknown keys. Messages of rules across fields name the
flat keys, e.g. ``crossmatch_radius_by_catalog: 'simbad' is not a configured catalog``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from processors.core.config.sections_io import Section

__all__ = ["CrossmatchSettings", "LearningSettings", "TrainSettings"]

_BUNDLED_CATALOGS = ("gaia", "hipparcos", "openngc")
_USER_COLUMN_KEYS = ("ra", "dec", "object_id", "magnitude", "kind")
_TAP_CATALOGS = {"simbad": "simbad", "gaia": "gaia_dr3"}
_ZTF_CATALOGS = ("ztf:ps1", "ztf:gaia", "ztf:gaia_bright", "ztf:ss", "ztf:ref")


class LearningSettings(Section):
    """Pseudo-labels, the normal-sample share, the dataset and when a retrain is requested."""

    pseudo_label_min_votes: int = Field(
        default=2, ge=1, le=3, description="detectors that must agree"
    )
    pseudo_label_min_score: float = Field(
        default=0.98,
        ge=0.0,
        le=1.0,
        description="least calibrated score of the min_votes-th detector",
    )
    pseudo_label_min_box_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    pseudo_label_crossmatch: Literal["unmatched", "matched", "any"] = Field(
        default="unmatched",
        description=(
            "unmatched: a candidate on a catalogued star is explained by it, not a label (a "
            "galaxy host does not count); matched: only candidates with a counterpart; any: the "
            "cross-match does not matter"
        ),
    )
    normal_sample_fraction: float = Field(
        default=0.0625,
        ge=0.0,
        le=1.0,
        description=(
            "share of served, unflagged images (by hash of id) whose pixels travel with their "
            "score, so the detect processor learns which boxes a source's normal images have"
        ),
    )
    label_novelty_alpha: float = Field(
        default=0.02,
        gt=0.0,
        lt=1.0,
        description="share of normal boxes a pseudo-label box may resemble",
    )
    label_novelty_min_reference: int = Field(
        default=64, ge=8, description="normal boxes of a source before its pseudo-labels are judged"
    )
    label_merge_gap_px: float = Field(
        default=2.0,
        ge=0.0,
        description="a pseudo-label's boxes this close are one (an extended source split in parts)",
    )
    held_out_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="share of images (by hash of id) that never train"
    )
    dataset_max_samples: int = Field(
        default=4096, ge=16, description="most recent pseudo-labels kept"
    )
    retrain_min_samples: int = Field(
        default=64, ge=1, description="new pseudo-labels before a retrain"
    )
    retrain_cooldown_s: float = Field(
        default=3600.0, ge=0.0, description="between retrain requests"
    )
    retrain_max_per_day: int = Field(
        default=6, ge=1, description="retrain budget per trailing 24 h"
    )


class TrainSettings(Section):
    """One training run of a detector (YOLO) in its own bounded process."""

    epochs: int = Field(default=40, ge=1, description="YOLO epochs per retrain")
    min_steps: int = Field(
        default=1500, ge=0, description="optimizer steps at least (more epochs on a small dataset)"
    )
    max_steps: int = Field(
        default=6000, ge=1, description="optimizer steps at most (fewer epochs on a large dataset)"
    )
    imgsz: int = Field(
        default=64, ge=32, le=1280, description="YOLO training image size (cutouts are ~64 px)"
    )
    timeout_s: float = Field(default=1800.0, gt=0.0, description="a training run is killed after")
    threads: int = Field(default=1, ge=1, description="CPU threads of the training process")
    memory_mb: int = Field(default=6144, ge=512, description="address-space limit of training")


class CrossmatchSettings(Section):
    """Catalog cross-match of candidates: bundled, user and ZTF-context catalogs, optional TAP.

    Invariants: user catalog names never shadow bundled ones; a per-catalog radius names a
    configured catalog and lies in (0, 3600] arcsec.
    """

    catalogs: list[str] = Field(
        default=["gaia", "openngc"],
        description="bundled offline catalogs each candidate is matched to",
    )
    radius_arcsec: float = Field(
        default=1.5, gt=0.0, le=60.0, description="match radius of a point source, every catalog"
    )
    radius_by_catalog: dict[str, float] = Field(
        default={}, description="per-catalog point-source radius in arcsec, e.g. {'simbad': 3.0}"
    )
    bright_star_catalogs: list[str] = Field(
        default=["gaia", "hipparcos"],
        description="catalogs whose bright stars match out to a magnitude-scaled radius",
    )
    bright_star_magnitude: float = Field(
        default=14.0, le=30.0, description="stars at or brighter than this count as bright"
    )
    bright_star_max_arcsec: float = Field(
        default=600.0,
        gt=0.0,
        le=3600.0,
        description="cap of the magnitude-scaled bright-star radius",
    )
    max_per_catalog: int = Field(default=5, ge=1, le=100, description="nearest kept per catalog")
    user_catalogs: dict[str, Path] = Field(
        default={}, description="name -> CSV, Parquet or FITS table with ra/dec columns (degrees)"
    )
    user_columns: dict[str, str] = Field(
        default={},
        description="column names of the user tables: ra, dec, object_id, magnitude, kind",
    )
    ztf_context: bool = Field(
        default=True,
        description="turn a ZTF alert's own context (ps1, gaia, ss) into cross-matches",
    )
    tap_service: Literal["simbad", "gaia"] | None = Field(
        default=None, description="online TAP cone search per candidate; unset means offline only"
    )
    tap_url: str | None = Field(default=None, description="TAP base URL (service default)")
    tap_radius_arcsec: float = Field(default=2.0, gt=0.0, le=600.0)
    tap_timeout_s: float = Field(default=10.0, gt=0.0, le=300.0)
    tap_attempts: int = Field(default=3, ge=1, le=10, description="tries per TAP query")
    tap_failures_to_open: int = Field(
        default=3, ge=1, description="failed queries in a row before the TAP circuit opens"
    )
    tap_open_s: float = Field(
        default=300.0, gt=0.0, description="seconds the TAP circuit stays open before a trial query"
    )

    @field_validator("catalogs", "bright_star_catalogs")
    @classmethod
    def _bundled_catalogs(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(_BUNDLED_CATALOGS))
        if unknown:
            raise ValueError(
                f"unknown catalogs {unknown}; accepted: {', '.join(_BUNDLED_CATALOGS)}"
            )
        return value

    @field_validator("user_columns")
    @classmethod
    def _user_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(_USER_COLUMN_KEYS))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; accepted: {', '.join(_USER_COLUMN_KEYS)}")
        return value

    @field_validator("tap_url")
    @classmethod
    def _tap_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _crossmatch_names(self) -> CrossmatchSettings:
        clash = sorted(set(self.user_catalogs) & set(_BUNDLED_CATALOGS))
        if clash:
            raise ValueError(f"crossmatch_user_catalogs: names {clash} are bundled catalogs")
        known = set(self.catalogs) | set(self.user_catalogs)
        if self.tap_service is not None:
            known.add(_TAP_CATALOGS[self.tap_service])
        if self.ztf_context:
            known.update(_ZTF_CATALOGS)
        for name, radius in self.radius_by_catalog.items():
            if name not in known:
                raise ValueError(
                    f"crossmatch_radius_by_catalog: {name!r} is not a configured catalog "
                    f"({', '.join(sorted(known)) or 'none'})"
                )
            if not 0.0 < radius <= 3600.0:
                raise ValueError(
                    f"crossmatch_radius_by_catalog: {name!r} = {radius}: must be in (0, 3600]"
                )
        return self

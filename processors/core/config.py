"""Typed configuration: defaults < YAML file < environment (``SKYLOOP_*``) < explicit overrides.

Validated once at start. Every error names the key, the bad value and what is accepted, e.g.
``SKYLOOP_TARGET_FPR=2: must be <= 0.5``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from processors.core.exceptions import ConfigError

__all__ = ["Settings", "load_settings"]

_BUNDLED_CATALOGS = ("gaia", "hipparcos", "openngc")
_USER_COLUMN_KEYS = ("ra", "dec", "object_id", "magnitude", "kind")
_TAP_CATALOGS = {"simbad": "simbad", "gaia": "gaia_dr3"}
_ZTF_CATALOGS = ("ztf:ps1", "ztf:gaia", "ztf:gaia_bright", "ztf:ss", "ztf:ref")


class Settings(BaseSettings):
    """Everything a processor may be configured with. Env vars are ``SKYLOOP_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SKYLOOP_", extra="forbid", frozen=True)

    # where things are
    data_dir: Path = Field(Path(".skyloop"), description="local stack data, artifacts, reports")
    bootstrap_servers: str | None = Field(
        None, description="Kafka bootstrap servers; unset means the embedded Tansu broker"
    )
    clickhouse_dsn: str | None = Field(
        None, description="chdb:///path or http(s)://...; unset means chdb under data_dir"
    )
    topic_prefix: str = Field("", description="prepended to every topic name (tests, tenants)")
    group_prefix: str = Field("skyloop", description="consumer group ids are <prefix>.<processor>")
    session_timeout_ms: int = Field(6000, ge=1000, description="Kafka consumer session timeout")
    progress_dir: Path | None = Field(None, description="where processors write progress files")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics port")
    broker_durable: bool = Field(
        False,
        description=(
            "the embedded broker keeps its log under <data_dir>/broker (S3 on localbucket), so "
            "a run started again on the same data dir resumes from committed offsets"
        ),
    )
    metrics_host: str = Field(
        "127.0.0.1", description="address /metrics binds to (0.0.0.0 in a container)"
    )

    # scoring
    backbone: str = "efficientnet_lite0"
    backbone_weights: str | None = None
    allow_random_weights: bool = False
    image_size: int = Field(224, ge=32, le=1024)
    batch_size: int = Field(32, ge=1, le=1024)
    batch_max_wait_ms: int = Field(200, ge=0, le=60_000)
    torch_threads: int | None = Field(None, ge=1)
    torch_compile: bool = Field(
        False, description="torch.compile the backbone forward pass (needs a C++ compiler on CPU)"
    )
    score_chunks: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "split each scoring batch into this many chunks; chunk k+1 is decoded and "
            "preprocessed on a worker thread while the model runs chunk k (1 = no overlap)"
        ),
    )
    ood_threads: int = Field(
        1,
        ge=1,
        description=(
            "BLAS threads for the scorer's OOD maths (numpy, scipy, faiss); small matrices, so "
            "more threads mostly spin against the backbone's own"
        ),
    )
    calibration_wait_s: float = Field(120.0, ge=0, description="scorer wait for a calibration")

    sink_batch_size: int = Field(
        20_000,
        ge=1,
        le=100_000,
        description=(
            "the sink inserts at most this many messages at once (each ClickHouse insert writes "
            "new parts, about 20-30 ms whatever its size: large batches amortise that)"
        ),
    )
    sink_batch_max_bytes: int = Field(
        64 << 20,
        ge=1 << 20,
        le=4 << 30,
        description="the sink stops adding to a batch once its messages hold this many bytes",
    )
    sink_batch_max_wait_ms: int = Field(
        1000, ge=0, le=60_000, description="the sink inserts what it has after this long"
    )
    sink_avro_landing: bool = Field(
        True,
        description=(
            "scores of the current schema go to ClickHouse as Avro, parsed by ClickHouse "
            "(processors.sink.landing); false stores every record as a row built in Python"
        ),
    )
    store_retry_max_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="longest back-off between retries of a batch ClickHouse refused",
    )

    ingest_max_lag: int = Field(
        2000,
        ge=0,
        description=(
            "ingest waits while the scorers are more than this many images behind (0: never waits)"
        ),
    )

    # calibration and decisions
    reference_size: int = Field(
        128, ge=20, description="images in the calibration reference window"
    )
    target_fpr: float = Field(0.05, gt=0.0, le=0.5)
    vote_k: int = Field(2, ge=1, le=3, description="detectors that must agree (k of 3)")
    reference_max_size: int = Field(
        1024,
        ge=20,
        description=(
            "a calibration is refined on twice its window while its source stays stable, up to "
            "this many images (the controller's ring per model and source holds as many; "
            "below reference_size it means no refinement)"
        ),
    )
    calibration_max_trim: float = Field(
        0.1, ge=0.0, le=0.5, description="at most this share of a window trimmed as far-out"
    )

    # self-correction (processors/control; DESIGN §5)
    control_policy: Literal["skyloop", "static", "astrolens"] = Field(
        "skyloop",
        description=(
            "skyloop: drift, recalibration, decay; static: calibrate once; astrolens: "
            "AstroLens v1.1's threshold rules (benchmarks)"
        ),
    )
    drift_window: int = Field(64, ge=16, description="images per drift test window")
    drift_min_reference: int = Field(
        64, ge=20, description="post-drift images enough for a first recalibration"
    )
    drift_step: int = Field(16, ge=1, description="a window is judged every this many images")
    drift_consecutive: int = Field(2, ge=1, description="disjoint disagreeing windows for drift")
    drift_ks_p: float = Field(0.002, gt=0.0, lt=1.0, description="KS p-value bound (scores)")
    drift_psi_min: float = Field(0.1, ge=0.0, description="PSI above its noise, with KS")
    drift_feature_p: float = Field(
        0.002, gt=0.0, lt=1.0, description="KS p bound on feature projections (Bonferroni)"
    )
    drift_flag_p: float = Field(0.002, gt=0.0, lt=1.0, description="binomial flag-rate bound")
    threshold_decay: float = Field(0.002, ge=0.0, lt=1.0, description="t = base(1 - d ln(1+n))")
    threshold_decay_every: int = Field(256, ge=1, description="images between decay events")
    threshold_floor: float = Field(0.5, ge=0.0, le=1.0)
    threshold_ceiling: float = Field(1.0, ge=0.0, le=1.0)
    rebalance_every: int = Field(512, ge=1, description="items per source between weights")
    source_weight_floor: float = Field(
        0.05, ge=0.0, lt=1.0, description="least share of draws of an active source"
    )
    backoff_window: int = Field(64, ge=1, description="items per source per error-rate check")
    backoff_max_error_rate: float = Field(0.2, gt=0.0, lt=1.0)
    backoff_base_s: float = Field(30.0, gt=0.0)
    backoff_max_s: float = Field(3600.0, gt=0.0)
    health_window: int = Field(256, ge=1, description="items per pipeline health window")
    health_max_error_rate: float = Field(0.5, gt=0.0, le=1.0)
    health_max_latency_p99_ms: float = Field(5000.0, gt=0.0)
    health_consecutive: int = Field(3, ge=1)
    health_pause_s: float = Field(60.0, gt=0.0)
    health_max_pause_s: float = Field(3600.0, gt=0.0)
    stats_window_s: float = Field(60.0, gt=0.0, description="tumbling window of lane stats")
    report_interval_s: float = Field(
        86400.0, gt=0.0, description="seconds between periodic reports during a run"
    )

    # model lifecycle (processors/controller/lifecycle.py, rollout.py, gate.py; DESIGN §5)
    rollout_trial_outputs: int = Field(
        64, ge=1, description="a new scoring model's shadow outputs judged by its gate"
    )
    rollout_shadow_outputs: int = Field(64, ge=1, description="healthy shadow outputs → canary")
    canary_fraction: float = Field(0.2, gt=0.0, le=1.0, description="canary share of images")
    canary_outputs: int = Field(256, ge=1, description="healthy canary outputs → promotion")
    canary_health_window: int = Field(
        32, ge=4, description="canary outputs per health judgement (one bad window: rollback)"
    )
    canary_max_latency_ratio: float = Field(3.0, gt=1.0, description="p99 vs production's")
    canary_ks_p: float = Field(0.001, gt=0.0, lt=1.0, description="KS p bound vs production")
    canary_min_agreement: float = Field(
        0.3, ge=-1.0, le=1.0, description="scorers: Spearman rho with production, same images"
    )
    gate_map50_tolerance: float = Field(0.02, ge=0.0, le=1.0)
    gate_min_map50: float = Field(
        0.3, ge=0.0, le=1.0, description="held-out mAP50 a first detector needs to pass its gate"
    )
    gate_max_latency_p99_ms: float = Field(2000.0, gt=0.0)

    # the learning loop (processors/detect, processors/controller/learning.py, retrain.py)
    pseudo_label_min_votes: int = Field(2, ge=1, le=3, description="detectors that must agree")
    pseudo_label_min_score: float = Field(
        0.98, ge=0.0, le=1.0, description="least calibrated score of the min_votes-th detector"
    )
    pseudo_label_min_box_confidence: float = Field(0.5, ge=0.0, le=1.0)
    pseudo_label_crossmatch: Literal["unmatched", "matched", "any"] = Field(
        "unmatched",
        description=(
            "unmatched: a candidate on a catalogued star is explained by it, not a label (a "
            "galaxy host does not count); matched: only candidates with a counterpart; any: the "
            "cross-match does not matter"
        ),
    )
    normal_sample_fraction: float = Field(
        0.0625,
        ge=0.0,
        le=1.0,
        description=(
            "share of served, unflagged images (by hash of id) whose pixels travel with their "
            "score, so the detect processor learns which boxes a source's normal images have"
        ),
    )
    label_novelty_alpha: float = Field(
        0.02, gt=0.0, lt=1.0, description="share of normal boxes a pseudo-label box may resemble"
    )
    label_novelty_min_reference: int = Field(
        64, ge=8, description="normal boxes of a source before its pseudo-labels are judged"
    )
    label_merge_gap_px: float = Field(
        2.0,
        ge=0.0,
        description="a pseudo-label's boxes this close are one (an extended source split in parts)",
    )
    held_out_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of images (by hash of id) that never train"
    )
    dataset_max_samples: int = Field(4096, ge=16, description="most recent pseudo-labels kept")
    retrain_min_samples: int = Field(64, ge=1, description="new pseudo-labels before a retrain")
    retrain_cooldown_s: float = Field(3600.0, ge=0.0, description="between retrain requests")
    retrain_max_per_day: int = Field(6, ge=1, description="retrain budget per trailing 24 h")
    train_epochs: int = Field(40, ge=1, description="YOLO epochs per retrain")
    train_min_steps: int = Field(
        1500, ge=0, description="optimizer steps at least (more epochs on a small dataset)"
    )
    train_max_steps: int = Field(
        6000, ge=1, description="optimizer steps at most (fewer epochs on a large dataset)"
    )
    train_imgsz: int = Field(
        64, ge=32, le=1280, description="YOLO training image size (cutouts are ~64 px)"
    )
    train_timeout_s: float = Field(1800.0, gt=0.0, description="a training run is killed after")
    train_threads: int = Field(1, ge=1, description="CPU threads of the training process")
    train_memory_mb: int = Field(6144, ge=512, description="address-space limit of training")

    # catalog cross-match (processors/detect; names of bundled catalogs: gaia, hipparcos, openngc)
    crossmatch_catalogs: list[str] = Field(
        ["gaia", "openngc"], description="bundled offline catalogs each candidate is matched to"
    )
    crossmatch_radius_arcsec: float = Field(
        1.5, gt=0.0, le=60.0, description="match radius of a point source, every catalog"
    )
    crossmatch_radius_by_catalog: dict[str, float] = Field(
        {}, description="per-catalog point-source radius in arcsec, e.g. {'simbad': 3.0}"
    )
    crossmatch_bright_star_catalogs: list[str] = Field(
        ["gaia", "hipparcos"],
        description="catalogs whose bright stars match out to a magnitude-scaled radius",
    )
    crossmatch_bright_star_magnitude: float = Field(
        14.0, le=30.0, description="stars at or brighter than this count as bright"
    )
    crossmatch_bright_star_max_arcsec: float = Field(
        600.0, gt=0.0, le=3600.0, description="cap of the magnitude-scaled bright-star radius"
    )
    crossmatch_max_per_catalog: int = Field(5, ge=1, le=100, description="nearest kept per catalog")
    crossmatch_user_catalogs: dict[str, Path] = Field(
        {}, description="name -> CSV, Parquet or FITS table with ra/dec columns (degrees)"
    )
    crossmatch_user_columns: dict[str, str] = Field(
        {},
        description="column names of the user tables: ra, dec, object_id, magnitude, kind",
    )
    crossmatch_ztf_context: bool = Field(
        True, description="turn a ZTF alert's own context (ps1, gaia, ss) into cross-matches"
    )
    crossmatch_tap_service: Literal["simbad", "gaia"] | None = Field(
        None, description="online TAP cone search per candidate; unset means offline only"
    )
    crossmatch_tap_url: str | None = Field(None, description="TAP base URL (service default)")
    crossmatch_tap_radius_arcsec: float = Field(2.0, gt=0.0, le=600.0)
    crossmatch_tap_timeout_s: float = Field(10.0, gt=0.0, le=300.0)
    crossmatch_tap_attempts: int = Field(3, ge=1, le=10, description="tries per TAP query")
    crossmatch_tap_failures_to_open: int = Field(
        3, ge=1, description="failed queries in a row before the TAP circuit opens"
    )
    crossmatch_tap_open_s: float = Field(
        300.0, gt=0.0, description="seconds the TAP circuit stays open before a trial query"
    )

    @field_validator("crossmatch_catalogs", "crossmatch_bright_star_catalogs")
    @classmethod
    def _bundled_catalogs(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(_BUNDLED_CATALOGS))
        if unknown:
            raise ValueError(
                f"unknown catalogs {unknown}; accepted: {', '.join(_BUNDLED_CATALOGS)}"
            )
        return value

    @field_validator("crossmatch_user_columns")
    @classmethod
    def _user_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(_USER_COLUMN_KEYS))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; accepted: {', '.join(_USER_COLUMN_KEYS)}")
        return value

    @field_validator("crossmatch_tap_url")
    @classmethod
    def _tap_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _crossmatch_names(self) -> Settings:
        clash = sorted(set(self.crossmatch_user_catalogs) & set(_BUNDLED_CATALOGS))
        if clash:
            raise ValueError(f"crossmatch_user_catalogs: names {clash} are bundled catalogs")
        known = set(self.crossmatch_catalogs) | set(self.crossmatch_user_catalogs)
        if self.crossmatch_tap_service is not None:
            known.add(_TAP_CATALOGS[self.crossmatch_tap_service])
        if self.crossmatch_ztf_context:
            known.update(_ZTF_CATALOGS)
        for name, radius in self.crossmatch_radius_by_catalog.items():
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

    # transport security (a production Kafka and ClickHouse server; unused by the local stack)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol of every client"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="Kafka SASL mechanism (with a SASL_* protocol)"
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = Field(
        None, description="from the environment or a secret file, never baked into an image"
    )
    kafka_ssl_ca_location: Path | None = Field(None, description="CA bundle (PEM) for Kafka TLS")
    kafka_ssl_certificate_location: Path | None = Field(None, description="client cert (PEM)")
    kafka_ssl_key_location: Path | None = Field(None, description="client key (PEM)")
    clickhouse_username: str | None = Field(None, description="overrides the DSN's user")
    clickhouse_password: SecretStr | None = Field(None, description="overrides the DSN's")
    clickhouse_ca_cert: Path | None = Field(None, description="CA bundle (PEM) for https DSNs")
    clickhouse_client_cert: Path | None = Field(None, description="client cert (PEM), mutual TLS")
    clickhouse_client_key: Path | None = Field(None, description="client key (PEM), mutual TLS")
    clickhouse_verify: bool = Field(True, description="verify the server's TLS certificate")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.threshold_floor > self.threshold_ceiling:
            raise ValueError("threshold_floor must be <= threshold_ceiling")
        if self.drift_step > self.drift_window:
            raise ValueError(f"drift_step ({self.drift_step}) must be <= drift_window")
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and (self.kafka_sasl_mechanism is None or self.kafka_sasl_username is None):
            raise ValueError(
                f"kafka_security_protocol={self.kafka_security_protocol} needs "
                "kafka_sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and kafka_sasl_username"
            )
        return self

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix_chars(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may contain only letters, digits, '.', '_' and '-'")
        return value

    def topic(self, base: str) -> str:
        """The real topic name of a base topic (``images.raw`` → ``<prefix>images.raw``)."""
        return f"{self.topic_prefix}{base}"

    def group(self, processor: str) -> str:
        return f"{self.group_prefix}.{processor}"

    @property
    def resolved_clickhouse_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if not key:  # a rule across keys: the message names them
            lines.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        env = f"SKYLOOP_{key.upper()}"
        value = err.get("input")
        lines.append(f"{key} ({env}) = {value!r}: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults, an optional YAML file, the environment and ``overrides``.

    ``config_file`` defaults to ``$SKYLOOP_CONFIG`` when set. Unknown keys are errors.
    """
    path = config_file or (
        Path(os.environ["SKYLOOP_CONFIG"]) if "SKYLOOP_CONFIG" in os.environ else None
    )
    file_values: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        file_values = loaded
    explicit = {k: v for k, v in overrides.items() if v is not None}
    # Environment wins over the file; explicit overrides win over both.
    env_keys = {name for name in Settings.model_fields if f"SKYLOOP_{name.upper()}" in os.environ}
    merged = {k: v for k, v in file_values.items() if k not in env_keys} | explicit
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from exc

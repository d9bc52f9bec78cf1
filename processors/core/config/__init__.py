"""Typed configuration: defaults < YAML file < environment (``SKYLOOP_*``) < explicit overrides.

Validated once at start; frozen; unknown keys are errors. Every error names the key as the
user wrote it, the bad value and what is accepted, e.g.
``target_fpr (SKYLOOP_TARGET_FPR) = '2': Input should be less than or equal to 0.5``.

Layout (ARCHITECTURE.md, "Settings"): a few global keys on ``Settings`` (``data_dir``,
``progress_dir``, ``control_policy``) and one frozen section per concern, read as
``settings.<section>.<field>``: ``kafka``, ``clickhouse``, ``broker``, ``metrics``,
``alerts``, ``batch``, ``ingest``, ``score``, ``ood``, ``calibration``, ``drift``, ``decay``,
``sources``, ``health``, ``rollout``, ``learning``, ``train``, ``crossmatch``, ``sink``,
``report``.

Inputs, each in two spellings that may be mixed:

* flat, as before sections existed: YAML ``drift_window: 32``, env ``SKYLOOP_DRIFT_WINDOW=32``,
  ``load_settings(drift_window=32)``, ``Settings(drift_window=32)``,
  ``settings.model_copy(update={"drift_window": 32})``;
* sectioned: YAML ``drift: {window: 32}``, env ``SKYLOOP_DRIFT__WINDOW=32`` (or
  ``SKYLOOP_DRIFT='{"window": 32}'``), ``load_settings(drift={"window": 32})``.

A field's flat name is its section's prefix and its name (``drift_`` + ``window``,
``crossmatch_`` + ``tap_url``, ``kafka_`` + ``sasl_username``, ``alert_`` + ``webhook_url``
for ``alerts``, ``threshold_`` + ``floor`` for ``decay``, ``train_`` + ``epochs``), no
prefix for ``score``, ``calibration``,
``sources``, ``rollout`` and ``learning``, except where the flat name was different:

=========================  ==============================
flat name                  sectioned field
=========================  ==============================
bootstrap_servers          kafka.bootstrap_servers
topic_prefix               kafka.topic_prefix
group_prefix               kafka.group_prefix
session_timeout_ms         kafka.session_timeout_ms
store_retry_max_s          sink.store_retry_max_s
log_retention_bytes        broker.log_retention_bytes
log_retention_s            broker.log_retention_s
score_chunks               score.chunks
calibration_max_trim       calibration.max_trim
threshold_decay            decay.rate
threshold_decay_every      decay.every
source_weight_floor        sources.weight_floor
stats_window_s             health.stats_window_s
rollout_trial_outputs      rollout.trial_outputs
rollout_shadow_outputs     rollout.shadow_outputs
canary_* / gate_*          rollout.canary_* / rollout.gate_*
=========================  ==============================

``FLAT_FIELDS`` holds the whole map (flat name -> (section, field)). Within one source a flat
key wins over the same field given sectioned; ``SKYLOOP_<FLAT>`` wins over
``SKYLOOP_<SECTION>__<FIELD>``.
"""

from processors.core.config.aliases import FLAT_FIELDS, SECTIONS, flat_name
from processors.core.config.loading import format_error, load_settings
from processors.core.config.sections_io import (
    AlertsSettings,
    BatchSettings,
    BrokerSettings,
    ClickHouseSettings,
    IngestSettings,
    KafkaSettings,
    MetricsSettings,
    ReportSettings,
    SinkSettings,
)
from processors.core.config.sections_learning import (
    _BUNDLED_CATALOGS,
    _TAP_CATALOGS,
    _ZTF_CATALOGS,
    CrossmatchSettings,
    LearningSettings,
    TrainSettings,
)
from processors.core.config.sections_scoring import (
    CalibrationSettings,
    DecaySettings,
    DriftSettings,
    HealthSettings,
    OodSettings,
    RolloutSettings,
    ScoreSettings,
    SourcesSettings,
)
from processors.core.config.settings import Settings

__all__ = [
    "FLAT_FIELDS",
    "SECTIONS",
    "_BUNDLED_CATALOGS",
    "_TAP_CATALOGS",
    "_ZTF_CATALOGS",
    "AlertsSettings",
    "BatchSettings",
    "BrokerSettings",
    "CalibrationSettings",
    "ClickHouseSettings",
    "CrossmatchSettings",
    "DecaySettings",
    "DriftSettings",
    "HealthSettings",
    "IngestSettings",
    "KafkaSettings",
    "LearningSettings",
    "MetricsSettings",
    "OodSettings",
    "ReportSettings",
    "RolloutSettings",
    "ScoreSettings",
    "Settings",
    "SinkSettings",
    "SourcesSettings",
    "TrainSettings",
    "flat_name",
    "format_error",
    "load_settings",
]

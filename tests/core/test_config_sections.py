"""Settings by section: flat and sectioned spellings of every input, errors, copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from processors.core.config import FLAT_FIELDS, SECTIONS, Settings, load_settings
from processors.core.exceptions import ConfigError

# every flat key of the configuration before it had sections (each must keep working)
_FLAT_KEYS = [
    "bootstrap_servers",
    "clickhouse_dsn",
    "topic_prefix",
    "group_prefix",
    "session_timeout_ms",
    "metrics_port",
    "broker_durable",
    "log_retention_bytes",
    "log_retention_s",
    "metrics_host",
    "alert_webhook_url",
    "alert_webhook_timeout_s",
    "alert_webhook_attempts",
    "backbone",
    "backbone_weights",
    "allow_random_weights",
    "image_size",
    "batch_size",
    "batch_max_wait_ms",
    "batch_poison_attempts",
    "batch_poison_limit",
    "torch_threads",
    "torch_compile",
    "prepared_backbone",
    "score_chunks",
    "ood_threads",
    "calibration_wait_s",
    "max_control_lag",
    "control_stall_s",
    "sink_batch_size",
    "sink_batch_max_bytes",
    "sink_batch_max_wait_ms",
    "sink_avro_landing",
    "store_retry_max_s",
    "ingest_max_lag",
    "ingest_max_pixels",
    "metrics_label_values_max",
    "reference_size",
    "target_fpr",
    "vote_k",
    "reference_max_size",
    "calibration_max_trim",
    "threshold_rule",
    "drift_window",
    "drift_min_reference",
    "drift_step",
    "drift_consecutive",
    "drift_ks_p",
    "drift_psi_min",
    "drift_feature_p",
    "drift_flag_p",
    "drift_sequential",
    "drift_sequential_k",
    "drift_sequential_arl",
    "drift_sequential_horizon",
    "drift_sequential_feature_k",
    "drift_revise",
    "threshold_decay",
    "threshold_decay_every",
    "threshold_floor",
    "threshold_ceiling",
    "rebalance_every",
    "source_weight_floor",
    "backoff_window",
    "backoff_max_error_rate",
    "backoff_base_s",
    "backoff_max_s",
    "health_window",
    "health_max_error_rate",
    "health_max_latency_p99_ms",
    "health_consecutive",
    "health_pause_s",
    "health_max_pause_s",
    "stats_window_s",
    "report_interval_s",
    "rollout_trial_outputs",
    "rollout_shadow_outputs",
    "canary_fraction",
    "canary_outputs",
    "canary_health_window",
    "canary_max_latency_ratio",
    "canary_ks_p",
    "canary_min_agreement",
    "canary_min_labels",
    "gate_map50_tolerance",
    "gate_min_map50",
    "gate_max_latency_p99_ms",
    "gate_min_held_out",
    "gate_interval_level",
    "gate_bootstrap_resamples",
    "gate_bootstrap_seed",
    "pseudo_label_min_votes",
    "pseudo_label_min_score",
    "pseudo_label_min_box_confidence",
    "pseudo_label_crossmatch",
    "normal_sample_fraction",
    "label_novelty_alpha",
    "label_novelty_min_reference",
    "label_merge_gap_px",
    "held_out_fraction",
    "dataset_max_samples",
    "retrain_min_samples",
    "retrain_cooldown_s",
    "retrain_max_per_day",
    "train_epochs",
    "train_min_steps",
    "train_max_steps",
    "train_imgsz",
    "train_timeout_s",
    "train_threads",
    "train_memory_mb",
    "crossmatch_catalogs",
    "crossmatch_radius_arcsec",
    "crossmatch_radius_by_catalog",
    "crossmatch_bright_star_catalogs",
    "crossmatch_bright_star_magnitude",
    "crossmatch_bright_star_max_arcsec",
    "crossmatch_max_per_catalog",
    "crossmatch_user_catalogs",
    "crossmatch_user_columns",
    "crossmatch_ztf_context",
    "crossmatch_tap_service",
    "crossmatch_tap_url",
    "crossmatch_tap_radius_arcsec",
    "crossmatch_tap_timeout_s",
    "crossmatch_tap_attempts",
    "crossmatch_tap_failures_to_open",
    "crossmatch_tap_open_s",
    "kafka_max_message_bytes",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_ca_location",
    "kafka_ssl_certificate_location",
    "kafka_ssl_key_location",
    "clickhouse_username",
    "clickhouse_password",
    "clickhouse_ca_cert",
    "clickhouse_client_cert",
    "clickhouse_client_key",
    "clickhouse_verify",
]


def test_every_old_flat_key_maps_onto_exactly_one_section_field() -> None:
    assert set(FLAT_FIELDS) == set(_FLAT_KEYS)
    fields = {(name, f) for name, model in SECTIONS.items() for f in model.model_fields}
    assert set(FLAT_FIELDS.values()) == fields
    assert set(Settings.model_fields) == {"data_dir", "progress_dir", "control_policy", *SECTIONS}


def test_sectioned_env_and_yaml_and_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "skyloop.yaml"
    config.write_text(
        "drift:\n  window: 128\n  step: 8\nbatch_size: 8\ncrossmatch:\n  tap_url: null\n"
    )
    monkeypatch.setenv("SKYLOOP_DRIFT__STEP", "4")
    monkeypatch.setenv("SKYLOOP_CALIBRATION__TARGET_FPR", "0.01")
    monkeypatch.setenv("SKYLOOP_CROSSMATCH__CATALOGS", '["hipparcos"]')
    s = load_settings(config, decay={"floor": 0.6}, threshold_ceiling=0.9)
    assert s.drift.window == 128  # file, sectioned
    assert s.drift.step == 4  # sectioned env beats file
    assert s.batch.size == 8  # file, flat
    assert s.calibration.target_fpr == 0.01
    assert s.crossmatch.catalogs == ["hipparcos"]
    assert (s.decay.floor, s.decay.ceiling) == (0.6, 0.9)  # overrides, both spellings


def test_flat_env_beats_file_and_sectioned_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "skyloop.yaml"
    config.write_text("drift_window: 128\n")
    monkeypatch.setenv("SKYLOOP_DRIFT_WINDOW", "96")
    monkeypatch.setenv("SKYLOOP_DRIFT__WINDOW", "80")
    monkeypatch.setenv("SKYLOOP_KAFKA", json.dumps({"group_prefix": "g", "topic_prefix": "x."}))
    monkeypatch.setenv("SKYLOOP_TOPIC_PREFIX", "t.")
    s = load_settings(config)
    assert s.drift.window == 96
    assert (s.kafka.group_prefix, s.kafka.topic_prefix) == ("g", "t.")
    assert load_settings(config, drift_window=70).drift.window == 70


def test_errors_name_the_key_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYLOOP_DRIFT__WINDOW", "4")
    with pytest.raises(ConfigError, match=r"drift\.window \(SKYLOOP_DRIFT__WINDOW\) = '4'"):
        load_settings()
    monkeypatch.delenv("SKYLOOP_DRIFT__WINDOW")
    with pytest.raises(ConfigError, match=r"drift_window \(SKYLOOP_DRIFT_WINDOW\) = 4"):
        load_settings(drift_window=4)
    with pytest.raises(ConfigError, match=r"drift\.windw \(SKYLOOP_DRIFT__WINDW\)"):
        load_settings(drift={"windw": 4})
    with pytest.raises(ConfigError, match=r"drift_step \(32\) must be <= drift_window"):
        load_settings(drift_step=32, drift_window=16)
    with pytest.raises(ConfigError, match="threshold_floor must be <= threshold_ceiling"):
        load_settings(decay={"floor": 0.9, "ceiling": 0.8})


def test_sections_are_frozen_and_refuse_unknown_keys() -> None:
    s = Settings(drift_window=32)
    with pytest.raises(ValidationError):
        s.drift.window = 8  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Settings(drift={"window": 32, "nope": 1})
    with pytest.raises(ValidationError):
        Settings(nope=1)


def test_model_copy_takes_flat_and_sectioned_updates() -> None:
    s = Settings()
    c = s.model_copy(update={"topic_prefix": "p.", "drift": {"step": 4}, "data_dir": Path("x")})
    assert (c.kafka.topic_prefix, c.topic("scores"), c.drift.step) == ("p.", "p.scores", 4)
    assert c.data_dir == Path("x") and c.drift.window == s.drift.window
    assert s.kafka.topic_prefix == "" and "topic_prefix" not in c.__dict__


def test_flat_dump_round_trips_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(crossmatch_catalogs=["hipparcos"], drift_window=80, kafka_sasl_username="u")
    for key, value in s.flat_dump(exclude_none=True).items():
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        monkeypatch.setenv(f"SKYLOOP_{key.upper()}", text)
    assert load_settings() == s

"""Prometheus metrics shared by all processors (one registry per process).

Names follow Prometheus conventions (``skyloop_<thing>_<unit>``); labels are low-cardinality
(processor, topic, source, error class, detector), never image ids. Labels whose values come
from data (source, model, model version, error class, issuer, event type) are bounded
(:mod:`processors.core.metric_labels`): past ``metrics.label_values_max`` distinct values per
label, further values are reported as ``other`` and counted in
``skyloop_metric_label_values_folded_total``.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from processors.core.metric_labels import LABEL_BOUND, Bounded, folded_counter

__all__ = [
    "BATCH_SECONDS",
    "CONSUMER_LAG",
    "CONTROL_EVENTS",
    "CONTROL_EVENTS_REFUSED",
    "CONTROL_OFFSET",
    "DEAD_LETTERS",
    "DRIFTS",
    "DRIFT_STATISTIC",
    "FLAG_RATE",
    "FLAG_RATE_TARGET",
    "IMAGES_SCORED",
    "LABELS_FOLDED",
    "MESSAGES_IN",
    "MESSAGES_OUT",
    "MODEL_INFO",
    "PIPELINE_PAUSED",
    "REGISTRY",
    "SCORE_LATENCY",
    "SOURCE_PAUSED",
    "SOURCE_WEIGHT",
    "STORE_RETRIES",
    "THRESHOLD",
    "bound_labels",
    "serve_metrics",
    "serving_models",
]

REGISTRY = CollectorRegistry(auto_describe=True)
# process_resident_memory_bytes, process_cpu_seconds_total, ... (Linux /proc) for the soak alerts
ProcessCollector(registry=REGISTRY)

MESSAGES_IN = Counter(
    "skyloop_messages_consumed_total",
    "Messages consumed",
    ["processor", "topic"],
    registry=REGISTRY,
)
MESSAGES_OUT = Counter(
    "skyloop_messages_produced_total",
    "Messages produced",
    ["processor", "topic"],
    registry=REGISTRY,
)
DEAD_LETTERS = Bounded(
    Counter(
        "skyloop_dead_letters_total",
        "Messages sent to images.dlq",
        ["processor", "error_class"],
        registry=REGISTRY,
    )
)
BATCH_SECONDS = Histogram(
    "skyloop_batch_duration_seconds",
    "Time to process one batch (consume to commit)",
    ["processor"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
CONTROL_OFFSET = Gauge(
    "skyloop_control_offset",
    "Offset of the last control event applied",
    ["processor"],
    registry=REGISTRY,
)
IMAGES_SCORED = Bounded(
    Counter(
        "skyloop_images_scored_total",
        "Images scored",
        ["source", "role", "candidate"],
        registry=REGISTRY,
    )
)
SCORE_LATENCY = Histogram(
    "skyloop_score_latency_seconds",
    "Per-image scoring latency (batch share)",
    ["role"],
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "skyloop_consumer_lag_messages",
    "Messages behind the partition's high watermark after the last committed batch",
    ["processor", "topic", "partition"],
    registry=REGISTRY,
)
STORE_RETRIES = Counter(
    "skyloop_store_retries_total",
    "Batches retried because the store (ClickHouse) was unavailable or refused them",
    ["processor"],
    registry=REGISTRY,
)
_serving: set[tuple[str, str, str]] = set()
MODEL_INFO = Bounded(
    Gauge(
        "skyloop_model_info",
        "1 for each model version a scorer serves, by role (production, shadow, canary)",
        ["role", "model_version", "backbone"],
        registry=REGISTRY,
    )
)

CONTROL_EVENTS = Bounded(
    Counter(
        "skyloop_control_events_emitted_total",
        "Control events emitted, by type and issuer",
        ["type", "issued_by"],
        registry=REGISTRY,
    )
)
CONTROL_EVENTS_REFUSED = Bounded(
    Counter(
        "skyloop_control_events_refused_total",
        "Control events the fold refused (processors.core.fold_guard), by type (known types only)",
        ["type"],
        registry=REGISTRY,
    )
)
DRIFTS = Bounded(
    Counter(
        "skyloop_drift_detected_total",
        "drift.detected events, per source and model",
        ["source", "model"],
        registry=REGISTRY,
    )
)
THRESHOLD = Bounded(
    Gauge(
        "skyloop_threshold",
        "Calibrated-score threshold in force (largest over detectors)",
        ["source", "model"],
        registry=REGISTRY,
    )
)
FLAG_RATE = Bounded(
    Gauge(
        "skyloop_flag_rate",
        "Flagged fraction of the last closed stats window",
        ["source", "model"],
        registry=REGISTRY,
    )
)
FLAG_RATE_TARGET = Gauge(
    "skyloop_flag_rate_target",
    "Flag rate the calibrations aim at (target_fpr)",
    registry=REGISTRY,
)
DRIFT_STATISTIC = Bounded(
    Gauge(
        "skyloop_drift_statistic",
        "Evidence of the last drift.detected per source and model (ks_p, psi, kl, ...)",
        ["source", "model", "statistic"],
        registry=REGISTRY,
    )
)
PIPELINE_PAUSED = Gauge(
    "skyloop_pipeline_paused",
    "1 while the pipeline is paused (pipeline.paused in force), else 0",
    registry=REGISTRY,
)
SOURCE_PAUSED = Bounded(
    Gauge(
        "skyloop_source_paused",
        "1 while a source is paused (source.paused in force), else 0",
        ["source"],
        registry=REGISTRY,
    )
)
SOURCE_WEIGHT = Bounded(
    Gauge(
        "skyloop_source_weight",
        "Weight published for a source (flag rate x (1 - error rate))",
        ["source"],
        registry=REGISTRY,
    )
)


LABELS_FOLDED = folded_counter(REGISTRY)


def bound_labels(limit: int) -> None:
    """Set the per-label bound on distinct values (``metrics.label_values_max``)."""
    LABEL_BOUND.set_limit(limit)


def serving_models(models: Iterable[tuple[str, str, str]]) -> None:
    """Set :data:`MODEL_INFO` to exactly ``models`` (role, model_version, backbone) triples."""
    wanted = set(models)
    for labels in _serving - wanted:
        MODEL_INFO.remove(*labels)
    for role, version, backbone in wanted - _serving:
        MODEL_INFO.labels(role, version, backbone).set(1)
    _serving.clear()
    _serving.update(wanted)


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Expose /metrics on ``host:port`` (0 = any free port); no-op when ``port`` is None.

    Loopback by default; a container sets ``0.0.0.0`` so Prometheus can reach it.
    """
    if port is not None:
        start_http_server(port, addr=host, registry=REGISTRY)

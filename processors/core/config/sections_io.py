"""Sections of the transport and storage settings: Kafka, ClickHouse, the embedded broker,
metrics, the runner's batches, ingest, the sink and the report.

Every section is frozen and refuses unknown keys, like ``Settings`` itself. A rule across fields
of one section is a validator of that section; its message names the flat keys (the form most
configurations use), e.g. ``kafka_security_protocol=SASL_SSL needs kafka_sasl_mechanism``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "AlertsSettings",
    "BatchSettings",
    "BrokerSettings",
    "ClickHouseSettings",
    "IngestSettings",
    "KafkaSettings",
    "MetricsSettings",
    "ReportSettings",
    "Section",
    "SinkSettings",
]


class Section(BaseModel):
    """Base of every settings section: frozen, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(Section):
    """Kafka clients: where the brokers are, topic and group names, transport security."""

    bootstrap_servers: str | None = Field(
        default=None, description="Kafka bootstrap servers; unset means the embedded Tansu broker"
    )
    topic_prefix: str = Field(
        default="", description="prepended to every topic name (tests, tenants)"
    )
    group_prefix: str = Field(
        default="skyloop", description="consumer group ids are <prefix>.<processor>"
    )
    session_timeout_ms: int = Field(
        default=6000, ge=1000, description="Kafka consumer session timeout"
    )
    max_message_bytes: int = Field(
        default=2_000_000,
        ge=1024,
        le=50_000_000,
        description=(
            "a consumed message larger than this (an outside producer's) is dead-lettered "
            "unread, and a control event that large is not applied; the default is what the "
            "pipeline's own producers can write"
        ),
    )
    # transport security (a production Kafka; unused by the local stack)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security.protocol of every client"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="Kafka SASL mechanism (with a SASL_* protocol)"
    )
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(
        default=None, description="from the environment or a secret file, never baked into an image"
    )
    ssl_ca_location: Path | None = Field(default=None, description="CA bundle (PEM) for Kafka TLS")
    ssl_certificate_location: Path | None = Field(default=None, description="client cert (PEM)")
    ssl_key_location: Path | None = Field(default=None, description="client key (PEM)")

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix_chars(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may contain only letters, digits, '.', '_' and '-'")
        return value

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (self.sasl_mechanism is None or self.sasl_username is None):
            raise ValueError(
                f"kafka_security_protocol={self.security_protocol} needs "
                "kafka_sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and kafka_sasl_username"
            )
        return self


class ClickHouseSettings(Section):
    """The ClickHouse server (or chdb) the sink and the report use, and its transport security."""

    dsn: str | None = Field(
        default=None, description="chdb:///path or http(s)://...; unset means chdb under data_dir"
    )
    # transport security (a production ClickHouse server; unused by the local stack)
    username: str | None = Field(default=None, description="overrides the DSN's user")
    password: SecretStr | None = Field(default=None, description="overrides the DSN's")
    ca_cert: Path | None = Field(default=None, description="CA bundle (PEM) for https DSNs")
    client_cert: Path | None = Field(default=None, description="client cert (PEM), mutual TLS")
    client_key: Path | None = Field(default=None, description="client key (PEM), mutual TLS")
    verify: bool = Field(default=True, description="verify the server's TLS certificate")


class BrokerSettings(Section):
    """The embedded (Tansu) broker of the local stack."""

    durable: bool = Field(
        default=False,
        description=(
            "the embedded broker keeps its log under <data_dir>/broker (S3 on localbucket), so "
            "a run started again on the same data dir resumes from committed offsets"
        ),
    )
    log_retention_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description=(
            "the hot log's bound: when the in-memory broker has grown this many bytes since its "
            "last rotation, the data topics are drained and recreated (control.events is kept "
            "whole; ClickHouse has every record); 0: unbounded"
        ),
    )
    log_retention_s: float = Field(
        default=3600.0,
        ge=0,
        description="the hot log's time bound: rotate at least this often (seconds; 0: never)",
    )


class MetricsSettings(Section):
    """The Prometheus ``/metrics`` endpoint of every processor."""

    port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus /metrics port")
    host: str = Field(
        default="127.0.0.1", description="address /metrics binds to (0.0.0.0 in a container)"
    )
    label_values_max: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description=(
            "distinct values a data-derived label (source, model, error class, issuer, ...) "
            "may take per process; later values are reported as 'other' and counted in "
            "skyloop_metric_label_values_folded_total"
        ),
    )


class AlertsSettings(Section):
    """Where a local run sends alerts (:mod:`processors.core.alerts`); a deployment's
    Prometheus and Alertmanager alert from the metrics instead."""

    webhook_url: str | None = Field(
        default=None,
        description=(
            "POST an Alertmanager-style webhook payload here on a health pause, a source "
            "back-off and a rollback (and resolved on the matching resume); unset: no alerts"
        ),
    )
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="one webhook request's timeout"
    )
    webhook_attempts: int = Field(
        default=5, ge=1, le=20, description="tries per alert, with back-off doubling from 0.5 s"
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class BatchSettings(Section):
    """The runner's consume batches (every processor but the sink, which has its own) and its
    quarantine of failing messages (every batch loop)."""

    size: int = Field(
        default=32, ge=1, le=1024, description="messages consumed (and scored) at once"
    )
    max_wait_ms: int = Field(
        default=200, ge=0, le=60_000, description="a partial batch waits this long"
    )
    poison_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description=(
            "a message whose processing fails (raises, or its worker dies) this many times in "
            "a row is dead-lettered and skipped (every batch loop, the sink's included)"
        ),
    )
    poison_limit: int = Field(
        default=5,
        ge=1,
        description=(
            "dead-lettering more than this many failing messages in a row, none processed in "
            "between, means the processor is broken, not the messages: it stops instead"
        ),
    )


class IngestSettings(Section):
    """The ingest processor."""

    max_lag: int = Field(
        default=2000,
        ge=0,
        description=(
            "ingest waits while the scorers are more than this many images behind (0: never waits)"
        ),
    )
    max_pixels: int = Field(
        default=16_777_216,
        ge=4,
        le=1 << 31,
        description=(
            "an image declaring more pixel values (width x height x bands) is dead-lettered "
            "from its header, before decoding, and gzip-compressed pixels may inflate to at "
            "most 8 bytes a value (decompression bombs); every worker's decoder obeys it"
        ),
    )


class SinkSettings(Section):
    """The ClickHouse sink's insert batches and its retries while ClickHouse is away."""

    batch_size: int = Field(
        default=20_000,
        ge=1,
        le=100_000,
        description=(
            "the sink inserts at most this many messages at once (each ClickHouse insert writes "
            "new parts, about 20-30 ms whatever its size: large batches amortise that)"
        ),
    )
    batch_max_bytes: int = Field(
        default=64 << 20,
        ge=1 << 20,
        le=4 << 30,
        description="the sink stops adding to a batch once its messages hold this many bytes",
    )
    batch_max_wait_ms: int = Field(
        default=1000, ge=0, le=60_000, description="the sink inserts what it has after this long"
    )
    avro_landing: bool = Field(
        default=True,
        description=(
            "scores of the current schema go to ClickHouse as Avro, parsed by ClickHouse "
            "(processors.sink.landing); false stores every record as a row built in Python"
        ),
    )
    store_retry_max_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="longest back-off between retries of a batch ClickHouse refused",
    )


class ReportSettings(Section):
    """The periodic Markdown report."""

    interval_s: float = Field(
        default=86400.0, gt=0.0, description="seconds between periodic reports during a run"
    )

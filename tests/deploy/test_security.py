"""TLS/SASL settings reach the Kafka and ClickHouse clients (by configuration only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Producer

from processors.core.clickhouse import client_options
from processors.core.config import Settings, load_settings
from processors.core.exceptions import ConfigError
from processors.core.kafka import faust_credentials, kafka_security, make_consumer, make_producer


def test_plaintext_adds_nothing() -> None:
    assert kafka_security(Settings()) == {}
    assert faust_credentials(Settings()) is None
    assert client_options(Settings()) == {}


def test_sasl_ssl_reaches_librdkafka_which_accepts_it() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="sky",
        kafka_sasl_password="s3cret",
    )
    conf = kafka_security(settings)
    assert conf == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "sky",
        "sasl.password": "s3cret",
    }
    # librdkafka validates the keys and values at construction
    Producer({"bootstrap.servers": "127.0.0.1:1", **conf})
    make_producer(settings, "127.0.0.1:1")
    make_consumer(settings, "127.0.0.1:1", "g").close()
    assert "s3cret" not in repr(settings)  # never logged with the settings


def test_tls_files_map_to_librdkafka_keys() -> None:
    conf = kafka_security(
        Settings(
            kafka_security_protocol="SSL",
            kafka_ssl_ca_location=Path("/etc/kafka/ca.pem"),
            kafka_ssl_certificate_location=Path("/etc/kafka/client.pem"),
            kafka_ssl_key_location=Path("/etc/kafka/client.key"),
        )
    )
    assert conf == {
        "security.protocol": "SSL",
        "ssl.ca.location": "/etc/kafka/ca.pem",
        "ssl.certificate.location": "/etc/kafka/client.pem",
        "ssl.key.location": "/etc/kafka/client.key",
    }


def test_sasl_without_mechanism_names_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYLOOP_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(ConfigError, match="kafka_sasl_mechanism"):
        load_settings()
    monkeypatch.setenv("SKYLOOP_KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ConfigError, match="SKYLOOP_KAFKA_SECURITY_PROTOCOL"):
        load_settings()


def test_faust_gets_the_same_credentials() -> None:
    creds = faust_credentials(
        Settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="sky",
            kafka_sasl_password="pw",
        )
    )
    assert creds.username == "sky" and creds.password == "pw"
    assert str(creds.mechanism.value) == "PLAIN"


def test_clickhouse_credentials_and_tls_stay_out_of_the_dsn() -> None:
    options = client_options(
        Settings(
            clickhouse_dsn="https://ch.example:8443/skyloop",
            clickhouse_username="sky",
            clickhouse_password="pw",
            clickhouse_ca_cert=Path("/etc/ssl/ca.pem"),
            clickhouse_verify=False,
        )
    )
    assert options == {
        "username": "sky",
        "password": "pw",
        "ca_cert": "/etc/ssl/ca.pem",
        "verify": False,
    }

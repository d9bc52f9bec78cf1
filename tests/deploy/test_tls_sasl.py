"""TLS and SASL against a broker: clear errors from the embedded one, the full path against one
that serves them.

The embedded broker (Tansu 0.6.0) cannot serve TLS or accept any SASL login: its ``--cert`` and
``--key`` exclude each other and it never wraps a connection in TLS, and with
``--authentication`` it requires SCRAM but its storage engine keeps no credentials, so every
user is unknown. What it can show is real: how our clients report a refused login, a broker
that hangs up on an unauthenticated client, and a TLS handshake with a broker that does not
speak TLS. The full path (producer and consumer over SASL_SSL, and a wrong password) runs
against a broker that serves it, named by ``SKYLOOP_TEST_SASL_SSL_BOOTSTRAP`` (with
``..._USERNAME``, ``..._PASSWORD``, ``..._MECHANISM`` and ``..._CA``).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest

from processors.core.config import Settings
from processors.core.exceptions import ConfigError, StackError
from processors.core.kafka import ensure_topics, faust_credentials, make_consumer, make_producer
from processors.core.stack import EmbeddedBroker

SASL = {
    "kafka_security_protocol": "SASL_PLAINTEXT",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "sky",
    "kafka_sasl_password": "not-the-password",
}
REAL = "SKYLOOP_TEST_SASL_SSL_BOOTSTRAP"


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem).

    Made with the openssl command (the cryptography package is not a dependency)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert, key, request = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "cert.csr"
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: object) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=skyloop test CA", "-keyout", ca_key, "-out", ca)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", key, "-out", request)  # fmt: skip
    openssl("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "1", "-extfile", ext, "-out", cert)  # fmt: skip
    return ca, cert, key


def test_a_refused_login_is_a_clear_error(tmp_path: Path) -> None:
    with EmbeddedBroker(log_path=tmp_path / "tansu.log", authentication=True) as broker:
        settings = Settings(**SASL)  # type: ignore[arg-type]
        with pytest.raises(ConfigError) as err:
            ensure_topics(settings, broker.bootstrap_servers, timeout_s=5)
    message = str(err.value)
    assert "the broker refused the SASL login" in message
    assert "kafka_sasl_mechanism=SCRAM-SHA-512" in message
    assert "kafka_sasl_username='sky'" in message and "kafka_sasl_password set" in message
    assert "unknown-user" in message  # what the broker answered, through librdkafka
    assert "not-the-password" not in message


def test_a_plaintext_client_of_an_authenticating_broker_is_told_why(tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log", authentication=True)
    # the broker hangs up, as a broker still starting would: retryable, and the message says why
    with broker, pytest.raises(StackError, match="requires TLS or a SASL login"):
        ensure_topics(Settings(), broker.bootstrap_servers, timeout_s=5)


def test_a_tls_client_of_a_plaintext_broker_is_told_why(
    kafka_bootstrap: str, tls_files: tuple[Path, Path, Path]
) -> None:
    ca, _, _ = tls_files
    settings = Settings(kafka_security_protocol="SSL", kafka_ssl_ca_location=ca)
    with pytest.raises(StackError) as err:
        ensure_topics(settings, kafka_bootstrap, timeout_s=5)
    # the embedded broker reads the TLS hello as a frame and waits; a Kafka listener hangs up
    # ("the TLS handshake failed"): either way the message names TLS and the settings
    assert "does not speak TLS on this port" in str(err.value)
    assert f"kafka_ssl_ca_location={ca}" in str(err.value)


def test_faust_trusts_the_configured_ca(tls_files: tuple[Path, Path, Path]) -> None:
    """The Faust (aiokafka) side loads the CA file itself: a real certificate, not a path."""
    ca, cert, key = tls_files
    creds = faust_credentials(
        Settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="sky",
            kafka_sasl_password="pw",
            kafka_ssl_ca_location=ca,
            kafka_ssl_certificate_location=cert,
            kafka_ssl_key_location=key,
        )
    )
    context = creds.ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
    assert {"commonName": "skyloop test CA"} in subjects


def _real_settings(password: str | None = None) -> Settings:
    return Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=os.environ.get(f"{REAL}_MECHANISM", "SCRAM-SHA-512"),  # type: ignore[arg-type]
        kafka_sasl_username=os.environ.get(f"{REAL}_USERNAME", "skyloop"),
        kafka_sasl_password=password or os.environ.get(f"{REAL}_PASSWORD", ""),
        kafka_ssl_ca_location=os.environ.get(f"{REAL}_CA") or None,
        topic_prefix=f"tls{uuid.uuid4().hex[:8]}.",
    )


@pytest.mark.skipif(
    REAL not in os.environ,
    reason=(
        "needs a Kafka broker serving SASL_SSL (TLS and a SCRAM login) at $"
        + REAL
        + ": the embedded Tansu 0.6.0 cannot (--cert and --key exclude each other, no TLS "
        "listener, no SCRAM credential storage)"
    ),
)
def test_the_pipeline_clients_over_tls_and_sasl() -> None:
    bootstrap = os.environ[REAL]
    settings = _real_settings()
    ensure_topics(settings, bootstrap)
    producer = make_producer(settings, bootstrap)
    producer.produce(settings.topic("images.dlq"), key=b"k", value=b"over TLS", partition=0)
    assert producer.flush(30) == 0
    consumer = make_consumer(settings, bootstrap, f"{settings.kafka.topic_prefix}reader")
    consumer.subscribe([settings.topic("images.dlq")])
    try:
        values = []
        for _ in range(60):
            msg = consumer.poll(1)
            if msg is not None and not msg.error():
                values.append(msg.value())
                break
        assert values == [b"over TLS"]
    finally:
        consumer.close()
    with pytest.raises(ConfigError, match="refused the SASL login"):
        ensure_topics(_real_settings("wrong-password"), bootstrap, timeout_s=10)

"""TLS and SASL: clear errors from the embedded broker, and the whole client path over SASL_SSL.

The embedded broker (Tansu 0.6.0) cannot serve TLS or accept any SASL login: its ``--cert`` and
``--key`` exclude each other and it never wraps a connection in TLS, and with
``--authentication`` it requires SCRAM but its storage engine keeps no credentials, so every
user is unknown. What it can show is real: how our clients report a refused login, a broker
that hangs up on an unauthenticated client, and a TLS handshake with a broker that does not
speak TLS.

The full path (librdkafka's producer, consumer and admin client, and the controller worker's
Faust app over aiokafka, with SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN logins, and wrong
passwords) runs against the embedded broker behind :class:`SaslSslGateway`, a SASL_SSL
listener written for these tests, or against a real Kafka named by
``SKYLOOP_TEST_SASL_SSL_BOOTSTRAP`` (with ``..._USERNAME``, ``..._PASSWORD``, ``..._MECHANISM``
and ``..._CA``).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from processors.controller.controller import ControllerConfig
from processors.core.artifacts import ArtifactStore
from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.exceptions import ConfigError, StackError
from processors.core.kafka import (
    ensure_topics,
    faust_credentials,
    make_consumer,
    make_producer,
    partition_for,
)
from processors.core.records import TOPICS
from processors.core.stack import EmbeddedBroker, free_port
from tests.deploy.sasl_ssl_gateway import SaslSslGateway
from tools.bench.policy_sim import StreamFeatures
from tools.bench.policy_sim import replay as simulate

SASL = {
    "kafka_security_protocol": "SASL_PLAINTEXT",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "sky",
    "kafka_sasl_password": "not-the-password",
}
REAL = "SKYLOOP_TEST_SASL_SSL_BOOTSTRAP"
CODEC = default_codec()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    return _tls_files(tmp_path)


def _tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Made with the openssl command (the cryptography package is not a dependency)."""
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
        started = time.monotonic()
        with pytest.raises(ConfigError) as err:
            ensure_topics(settings, broker.bootstrap_servers, timeout_s=60)
        assert time.monotonic() - started < 30, "a refused login is final: no waiting it out"
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


@dataclass(frozen=True)
class SecureKafka:
    """A Kafka that requires SASL_SSL: where it listens, its CA, and a user's login."""

    bootstrap: str
    ca: Path | None
    username: str
    password: str
    mechanism: str
    gateway: SaslSslGateway | None = None
    """The gateway in front of the embedded broker (it counts logins and refusals), if so."""

    def settings(self, password: str | None = None, mechanism: str | None = None) -> Settings:
        """Client settings for this Kafka, on topics and groups of their own."""
        token = uuid.uuid4().hex[:8]
        return Settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism=mechanism or self.mechanism,
            kafka_sasl_username=self.username,
            kafka_sasl_password=password or self.password,
            kafka_ssl_ca_location=self.ca,
            topic_prefix=f"tls{token}.",
            group_prefix=f"tls{token}",
        )

    def env(self, settings: Settings) -> dict[str, str]:
        """The same settings as a worker's environment."""
        kafka = settings.kafka
        env = {
            "SKYLOOP_BOOTSTRAP_SERVERS": self.bootstrap,
            "SKYLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "SKYLOOP_KAFKA_SASL_MECHANISM": str(kafka.sasl_mechanism),
            "SKYLOOP_KAFKA_SASL_USERNAME": self.username,
            "SKYLOOP_KAFKA_SASL_PASSWORD": self.password,
            "SKYLOOP_TOPIC_PREFIX": kafka.topic_prefix,
            "SKYLOOP_GROUP_PREFIX": kafka.group_prefix,
        }
        if self.ca is not None:
            env["SKYLOOP_KAFKA_SSL_CA_LOCATION"] = str(self.ca)
        return env


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """A Kafka serving SASL_SSL: the one named by $SKYLOOP_TEST_SASL_SSL_BOOTSTRAP, or the
    embedded broker behind :class:`SaslSslGateway` (TLS with a test CA, SCRAM and PLAIN logins
    checked by the gateway, the log kept by the broker)."""
    if REAL in os.environ:
        yield SecureKafka(
            os.environ[REAL],
            Path(os.environ[f"{REAL}_CA"]) if os.environ.get(f"{REAL}_CA") else None,
            os.environ.get(f"{REAL}_USERNAME", "skyloop"),
            os.environ.get(f"{REAL}_PASSWORD", ""),
            os.environ.get(f"{REAL}_MECHANISM", "SCRAM-SHA-512"),
        )
        return
    ca, cert, key = _tls_files(tmp_path_factory.mktemp("tls"))
    gateway_port = free_port()
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log, advertised_port=gateway_port) as broker:
        gateway = SaslSslGateway(broker.port, cert, key, {"skyloop": "s3cret"}, gateway_port)
        with gateway:
            yield SecureKafka(
                gateway.bootstrap_servers, ca, "skyloop", "s3cret", "SCRAM-SHA-512", gateway
            )


def test_the_pipeline_clients_over_tls_and_sasl(secure_kafka: SecureKafka) -> None:
    settings = secure_kafka.settings()
    bootstrap = secure_kafka.bootstrap
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
    started = time.monotonic()
    with pytest.raises(ConfigError, match="refused the SASL login") as err:
        ensure_topics(secure_kafka.settings("wrong-password"), bootstrap, timeout_s=60)
    assert time.monotonic() - started < 30, "a refused login is final: no waiting it out"
    assert "wrong-password" not in str(err.value)
    if secure_kafka.gateway is not None:  # it answered the logins, not the broker
        assert secure_kafka.gateway.logins >= 2 and secure_kafka.gateway.refusals >= 1


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_the_other_login_mechanisms(secure_kafka: SecureKafka, mechanism: str) -> None:
    if secure_kafka.gateway is None:
        pytest.skip("a real broker serves the mechanisms it was configured with")
    ensure_topics(secure_kafka.settings(mechanism=mechanism), secure_kafka.bootstrap)
    with pytest.raises(ConfigError, match=f"kafka_sasl_mechanism={mechanism}"):
        settings = secure_kafka.settings("wrong-password", mechanism)
        ensure_topics(settings, secure_kafka.bootstrap, timeout_s=30)


def test_the_controller_worker_over_tls_and_sasl(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    """The Faust side (aiokafka: its consumer group, its tables' changelogs) and the control
    log's librdkafka producer, in the real worker process: scores in, a calibration out."""
    settings = secure_kafka.settings()
    bootstrap = secure_kafka.bootstrap
    ensure_topics(settings, bootstrap)
    rng = np.random.default_rng(5)
    n = 400
    stream = StreamFeatures(
        rng.gamma(2.0, 1.0, size=(n, 32)).astype(np.float32),
        rng.normal(-8.0, 0.5, n),
        np.zeros(n, bool),
        [""] * n,
    )
    store = ArtifactStore(tmp_path / "sim")
    records = simulate(stream, ControllerConfig(), keep_records=True, store=store).records
    producer = make_producer(settings, bootstrap)
    partition = partition_for("sim", TOPICS["scores"].partitions)
    for record in records:
        producer.produce(
            settings.topic("scores"),
            key=record["image_id"].encode(),
            value=CODEC.encode(record, "skyloop.ScoreRecord"),
            partition=partition,
        )
    assert producer.flush(30) == 0

    data = tmp_path / "worker"
    data.mkdir()
    env = {
        **os.environ,
        **secure_kafka.env(settings),
        "SKYLOOP_DATA_DIR": str(data),
        "SKYLOOP_PROGRESS_DIR": str(data / "progress"),
    }
    logins = secure_kafka.gateway.logins if secure_kafka.gateway is not None else 0
    with open(data / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "processors.cli", "worker", "controller"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    consumer = make_consumer(settings, bootstrap, f"{settings.kafka.topic_prefix}events")
    consumer.subscribe([settings.topic("control.events")])
    try:
        events: list[dict[str, object]] = []
        deadline = time.monotonic() + 90
        while not events and time.monotonic() < deadline:
            assert worker.poll() is None, (data / "worker.log").read_text()[-3000:]
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                events.append(CODEC.decode(msg.value() or b"", "skyloop.ControlEvent"))
    finally:
        consumer.close()
        worker.terminate()
        worker.wait(30)
    log_tail = (data / "worker.log").read_text()[-3000:]
    assert [e["type"] for e in events] == ["calibration.updated"], log_tail
    if secure_kafka.gateway is not None:  # the worker's clients, and the reader, logged in
        assert secure_kafka.gateway.logins >= logins + 3

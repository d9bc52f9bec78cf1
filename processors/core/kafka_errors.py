"""Why a Kafka client could not talk to the brokers, in words that name the settings to check.

librdkafka reports a refused SASL login, a failed TLS handshake or a broker that hangs up on
an unauthenticated client only through its error callback and its log, and then answers the
call that needed the connection with a bare "transport failure" or a timeout. :class:`Watch`
collects those errors for one client (they are served by the client's ``poll``: call it once
the failing call has returned), and :func:`explain` turns them, with the settings in use,
into an error whose message says what the broker refused and which settings
(``kafka_security_protocol``, ``kafka_sasl_*``, ``kafka_ssl_*``) decide it: a
:class:`ConfigError` for a refusal, a :class:`StackError` when nothing answered.

Invariant: :func:`explain` never includes the password, only whether one is set.
"""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import KafkaError

from processors.core.config import Settings
from processors.core.exceptions import ConfigError, StackError

__all__ = ["Watch", "explain", "watched"]

_REFUSALS = (KafkaError._AUTHENTICATION, KafkaError._SSL)


class Watch:
    """The error callback of one client (``{"error_cb": watch}``): keeps the distinct errors."""

    def __init__(self) -> None:
        self.errors: list[KafkaError] = []
        self._lock = threading.Lock()

    def __call__(self, error: KafkaError) -> None:
        """Keep the first error of each code (librdkafka repeats them on every retry)."""
        with self._lock:
            if all(e.code() != error.code() for e in self.errors):
                self.errors.append(error)

    def refused(self) -> bool:
        """Whether the broker refused the login or the TLS handshake (trying again cannot
        help), as opposed to not answering yet."""
        with self._lock:
            return any(e.code() in _REFUSALS for e in self.errors)

    def text(self) -> str:
        with self._lock:
            return "; ".join(e.str() for e in self.errors)


def _kind(text: str, codes: set[int]) -> str:
    lowered = text.lower()
    if KafkaError._AUTHENTICATION in codes or "sasl" in lowered:
        return "sasl"
    if KafkaError._SSL in codes or "ssl" in lowered or "handshake" in lowered:
        return "tls"
    return "transport"


def explain(
    settings: Settings, bootstrap: str, watch: Watch, cause: BaseException
) -> ConfigError | StackError:
    """Why the brokers at ``bootstrap`` did not serve the client, and what to check; ``cause``
    is what the failing call raised. A refused login or TLS handshake is a ConfigError (trying
    again cannot help); no answer at all is a StackError (the brokers may be starting: ``skyloop
    init --wait`` tries again), whose message still names the settings that could explain it."""
    kafka = settings.kafka
    seen = watch.text() or str(cause)
    codes = {e.code() for e in watch.errors}
    kind = _kind(seen, codes)
    protocol = f"kafka_security_protocol={kafka.security_protocol}"
    if kind == "sasl":
        login = (
            f"kafka_sasl_mechanism={kafka.sasl_mechanism}, "
            f"kafka_sasl_username={kafka.sasl_username!r}, kafka_sasl_password "
            + ("set" if kafka.sasl_password is not None else "unset")
        )
        what = f"the broker refused the SASL login ({protocol}, {login})"
    elif kind == "tls":
        what = (
            f"the TLS handshake failed ({protocol}, "
            f"kafka_ssl_ca_location={kafka.ssl_ca_location}): the broker may not speak TLS on "
            "this port, or its certificate is not signed by that CA"
        )
    elif kafka.security_protocol == "PLAINTEXT":
        what = (
            f"no usable connection ({protocol}): the broker is down, or it requires TLS or a "
            "SASL login (set kafka_security_protocol and the kafka_sasl_* / kafka_ssl_* keys)"
        )
    elif kafka.security_protocol in ("SSL", "SASL_SSL"):
        what = (
            f"no answer over TLS ({protocol}, kafka_ssl_ca_location={kafka.ssl_ca_location}): "
            "the broker is down, or does not speak TLS on this port"
        )
    else:
        what = f"no usable connection ({protocol}): the broker is down or refused the client"
    message = f"Kafka at {bootstrap}: {what}. librdkafka said: {seen}"
    return ConfigError(message) if kind in ("sasl", "tls") else StackError(message)


def watched(conf: dict[str, Any]) -> tuple[dict[str, Any], Watch]:
    """``conf`` with a fresh :class:`Watch` as its error callback, and the watch."""
    watch = Watch()
    return {**conf, "error_cb": watch}, watch

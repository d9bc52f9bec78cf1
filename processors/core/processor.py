"""The contract between a processor and the runner that drives it.

A :class:`Processor` is mostly pure logic: :class:`processors.core.runner.Runner` hands it
batches of :class:`InMessage` and a consistent ``ControlState`` snapshot, and produces the
:class:`OutMessage` list it returns (guarantees in the runner's module docstring). The
:class:`RunContext` gives a processor its settings, codec, progress file and the one way to
build a dead letter; :class:`StopSignal` turns SIGTERM/SIGINT into a flag the loop checks
between batches. :mod:`processors.core.runner` re-exports every name here.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from processors.core.codec import AvroCodec
from processors.core.config import Settings
from processors.core.control import ControlState
from processors.core.kafka import partition_for
from processors.core.metrics import DEAD_LETTERS
from processors.core.progress import ProgressFile
from processors.core.records import TOPICS, dead_letter

__all__ = [
    "DeliveryError",
    "InMessage",
    "OutMessage",
    "Processor",
    "RunContext",
    "StopSignal",
]


class InMessage(NamedTuple):
    """A consumed message; ``topic`` is the base name (without the configured prefix).

    Immutable. A named tuple rather than a frozen dataclass: the sink makes one per message,
    tens of thousands a second, and a frozen dataclass costs three times as much to build.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int = -1
    """The broker's record timestamp (ms since the epoch), -1 when it has none."""


@dataclass(frozen=True)
class OutMessage:
    topic: str
    key: bytes
    value: bytes
    partition: int | None = None


@dataclass
class RunContext:
    """What a processor may use: settings, codec, a progress file, and dead-letter building."""

    settings: Settings
    bootstrap: str
    processor: str
    codec: AvroCodec
    progress: ProgressFile
    extra: dict[str, Any] = field(default_factory=dict)

    def dead_letter(
        self,
        msg: InMessage,
        exc: BaseException,
        source: str | None = None,
        *,
        reason: str | None = None,
    ) -> OutMessage:
        """Wrap a message that cannot be processed, whole, with the reason.

        With ``source`` (the image source, when the message was readable enough to tell) the
        dead letter goes to that source's partition, beside its scores. ``reason`` replaces
        ``str(exc)`` as the dead letter's message (the quarantine adds attempts and frames).
        """
        error_class = type(exc).__name__
        DEAD_LETTERS.labels(self.processor, error_class).inc()
        self.progress.add("dead_letters")
        record = dead_letter(
            original_topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key,
            raw=msg.value,
            error_class=error_class,
            message=str(exc) if reason is None else reason,
            processor=self.processor,
            source=source,
        )
        partition = (
            None if source is None else partition_for(source, TOPICS["images.dlq"].partitions)
        )
        return OutMessage(
            "images.dlq", msg.key or b"", self.codec.encode(record, "skyloop.DeadLetter"), partition
        )


class Processor(Protocol):
    name: str
    inputs: tuple[str, ...]

    def setup(self, ctx: RunContext) -> None: ...

    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]: ...

    def close(self) -> None: ...


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks between batches."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.event.set())
        return self

    def is_set(self) -> bool:
        return self.event.is_set()


class DeliveryError(RuntimeError):
    """A produced message was not delivered; offsets are not committed."""

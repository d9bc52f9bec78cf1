"""Fault injection for tests and ``tools/chaos``: make chosen records crash their consumer.

Inert unless ``SKYLOOP_FAULTS`` is set: :func:`wrap` then returns the processor it is given,
unchanged, so production runs never pass through this module's code. With it set, the
processors it names are wrapped in a :class:`FaultyProcessor`, which acts *every time* a batch
holding a matching message is processed (a deterministic poison record, as a real crash bug
would be):

``SKYLOOP_FAULTS="PROCESSOR:ACTION:TARGET[;...]"``

- ``PROCESSOR``: the processor's name (``score``, ``detect``, ``sink``, or a test's).
- ``ACTION``: ``raise`` (an :class:`InjectedFault` out of ``process``), ``exit``
  (``os._exit(70)``: the process dies at once, no cleanup, as on a fatal error in native code)
  or ``kill`` (SIGKILL to itself, as the kernel's OOM killer would).
- ``TARGET``: ``TOPIC/PARTITION/OFFSET`` (one record, e.g. ``images.raw/0/20``; topic base
  name) or ``key=TEXT`` (every record whose key contains ``TEXT``).

>>> faults = parse("score:exit:images.raw/0/20; echo:raise:key=message-3")
>>> [(f.processor, f.action, f.matches("images.raw", 0, 20, b"x")) for f in faults]
[('score', 'exit', True), ('echo', 'raise', False)]
>>> faults[1].matches("images.raw", 3, 7, b"message-3")
True
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from processors.core.control import ControlState
from processors.core.exceptions import ConfigError
from processors.core.processor import InMessage, OutMessage, Processor, RunContext

__all__ = ["ENV", "Fault", "FaultyProcessor", "InjectedFault", "parse", "wrap"]

ENV = "SKYLOOP_FAULTS"
ACTIONS = ("raise", "exit", "kill")


class InjectedFault(RuntimeError):
    """The ``raise`` action's error: a valid record that its consumer cannot process."""


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``processor`` does ``action`` on the records ``matches`` accepts."""

    processor: str
    action: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None

    def matches(self, topic: str, partition: int, offset: int, key: bytes | None) -> bool:
        if self.key is not None:
            return key is not None and self.key in key
        return (topic, partition, offset) == (self.topic, self.partition, self.offset)

    def act(self, message: InMessage) -> None:
        where = f"{message.topic}/{message.partition}/{message.offset}"
        if self.action == "raise":
            raise InjectedFault(f"injected fault ({ENV}) on {where}")
        if self.action == "exit":
            os._exit(70)
        os.kill(os.getpid(), signal.SIGKILL)


def parse(text: str) -> list[Fault]:
    """The faults ``text`` (the value of ``SKYLOOP_FAULTS``) names; a bad entry is an error."""
    faults = []
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        parts = entry.split(":", 2)
        if len(parts) != 3 or parts[1] not in ACTIONS:
            raise ConfigError(
                f"{ENV}: {entry!r} is not PROCESSOR:ACTION:TARGET with ACTION one of "
                f"{', '.join(ACTIONS)} and TARGET TOPIC/PARTITION/OFFSET or key=TEXT"
            )
        processor, action, target = parts
        if target.startswith("key="):
            faults.append(Fault(processor, action, key=target[4:].encode()))
            continue
        topic, _, rest = target.rpartition("/")
        topic, _, partition = topic.rpartition("/")
        if not (topic and partition.isdigit() and rest.isdigit()):
            raise ConfigError(f"{ENV}: {target!r} is not TOPIC/PARTITION/OFFSET or key=TEXT")
        faults.append(Fault(processor, action, topic, int(partition), int(rest)))
    return faults


class FaultyProcessor:
    """A processor that acts out its faults before handing a batch on (attributes delegated)."""

    def __init__(self, inner: Processor, faults: Sequence[Fault]) -> None:
        self.inner = inner
        self.faults = tuple(faults)
        self.name: str = inner.name
        self.inputs: tuple[str, ...] = inner.inputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def setup(self, ctx: RunContext) -> None:
        self.inner.setup(ctx)

    def close(self) -> None:
        self.inner.close()

    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        for message in batch:
            for fault in self.faults:
                if fault.matches(message.topic, message.partition, message.offset, message.key):
                    fault.act(message)
        return self.inner.process(batch, state)


def wrap(processor: Processor) -> Processor:
    """``processor`` itself unless ``SKYLOOP_FAULTS`` names faults for it."""
    text = os.environ.get(ENV)
    if not text:
        return processor
    mine = [f for f in parse(text) if f.processor == processor.name]
    return FaultyProcessor(processor, mine) if mine else processor

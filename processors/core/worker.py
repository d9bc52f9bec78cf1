"""The one contract every worker declares: a :class:`WorkerSpec`, as data.

A worker is one long-running process, ``skyloop worker NAME``. Each lives in its own package
and declares, in ``processors/<package>/worker.py``, a module-level ``SPEC`` and a
``run(settings, args) -> int``. The spec says what the worker reads and writes (topic base names
of :data:`processors.core.records.TOPICS`), what state it keeps, which control events it folds
and which it emits, where its settings live and under which consumer group it consumes.
:mod:`processors.topology` lists the worker modules; ``skyloop topology`` prints them.

Invariants:

- A spec is immutable and importing it is cheap: a worker module imports only this module at
  its top; what the worker needs to run (torch, Faust, ClickHouse) is imported inside ``run``.
- ``consumes`` are the topics the worker reads in its consumer group (for a batch loop, exactly
  its processor's ``inputs``). Following ``control.events`` to fold it into a ``ControlState``
  is not consuming: it reads the whole log with no group, and is declared by ``folds``.
- ``group`` is the suffix of the worker's consumer group id (``settings.group(group)``) and the
  name of its progress file; it never changes once data exists (committed offsets, Faust
  changelog topics and progress files are keyed by it), even when the worker is renamed.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["WHOLE_LOG", "RunMode", "WorkerRun", "WorkerSpec", "join_then_run", "run_batch_loop"]

RunMode = Literal["batch loop", "faust app", "control-log follower", "source producer"]
"""How a worker runs: ``batch loop`` (:class:`processors.core.runner.Runner` around a
``Processor``), ``faust app`` (a Faust worker with changelog-backed tables),
``control-log follower`` (reads ``control.events`` only, answers some of its events),
``source producer`` (reads image sources outside Kafka and produces them)."""

WHOLE_LOG: tuple[str, ...] = ("*",)
"""``folds`` of a worker that follows ``control.events`` and folds every event into its
``ControlState`` (every worker does today)."""

WorkerRun = Callable[[Any, argparse.Namespace], int]
"""``run(settings, args) -> exit status``: the worker's whole life, in the calling process."""


@dataclass(frozen=True)
class WorkerSpec:
    """One worker's declaration: name, what it reads, writes, keeps and decides."""

    name: str
    """The name ``skyloop worker NAME`` takes and the compose service's."""
    summary: str
    """One line: what the worker does."""
    mode: RunMode
    consumes: tuple[str, ...]
    """Topic base names read in the worker's consumer group."""
    produces: tuple[str, ...]
    """Topic base names the worker produces to."""
    state: tuple[str, ...]
    """What the worker keeps beyond its offsets (tables, stores, windows), in short words."""
    folds: tuple[str, ...]
    """Control event types folded into its ``ControlState`` (:data:`WHOLE_LOG`: all of them)."""
    emits: tuple[str, ...]
    """Control event types the worker itself emits to ``control.events``."""
    settings_sections: tuple[str, ...]
    """The settings sections that tune it (``settings.<section>``), the first its own."""
    group: str
    """Consumer group id suffix (``settings.group(group)``), also its progress file's name."""
    run: str
    """``module:function`` of its ``run(settings, args) -> int``, imported only to run it."""
    aliases: tuple[str, ...] = ()
    """Other names ``skyloop worker`` accepts (former names)."""
    processor: str | None = None
    """``module:class`` of its ``Processor``, for a batch loop (imported only when asked)."""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def load_run(self) -> WorkerRun:
        """Import and return the worker's ``run`` (this is where its heavy imports happen)."""
        run: WorkerRun = _load(self.run)
        return run

    def load_processor(self) -> type[Any] | None:
        """The ``Processor`` class of a batch loop (imports its module), else None."""
        return None if self.processor is None else _load(self.processor)

    def describe(self) -> dict[str, Any]:
        """The spec as plain data (JSON-ready), in declaration order."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "summary": self.summary,
            "mode": self.mode,
            "consumes": list(self.consumes),
            "produces": list(self.produces),
            "state": list(self.state),
            "folds": "all" if self.folds == WHOLE_LOG else list(self.folds),
            "emits": list(self.emits),
            "settings_sections": list(self.settings_sections),
            "group": self.group,
            "run": self.run,
        }


def run_batch_loop(processor: Any, settings: Any, **limits: Any) -> int:
    """Run ``processor`` in a :class:`~processors.core.runner.Runner` until SIGTERM/SIGINT.

    ``limits`` are the runner's batch limits (``batch_size``, ``max_batch_bytes``,
    ``max_wait_s``) and, from :func:`join_then_run`, ``joined``; its guarantees are the
    runner's (commit after produce, at least once).
    """
    from processors.core.runner import Runner, StopSignal

    Runner(
        processor,
        settings,
        settings.kafka.bootstrap_servers,
        stop=StopSignal().install(),
        progress_dir=settings.progress_dir,
        **limits,
    ).run()
    return 0


def join_then_run(
    spec: WorkerSpec, make_processor: Callable[[], Any], settings: Any, **limits: Any
) -> int:
    """:func:`run_batch_loop` for a processor whose module is slow to import (torch): the
    worker joins ``spec``'s group (``spec.group``, ``spec.consumes``) first, then calls
    ``make_processor``, so the broker's delay on a first join overlaps the imports (measured on
    the scorer: about 3 s of imports, and the embedded broker holds a first join 3 s).

    The processor must be the one ``spec`` declares (its name is ``spec.group`` and its inputs
    ``spec.consumes``); a mismatch raises ``ValueError`` before anything is consumed.
    """
    from processors.core.runner import join_group

    joined = join_group(settings, settings.kafka.bootstrap_servers, spec.group, spec.consumes)
    try:
        processor = make_processor()
        declared = (processor.name, tuple(processor.inputs))
        if declared != (spec.group, spec.consumes):
            raise ValueError(
                f"worker {spec.name!r} joined {spec.group!r} for {list(spec.consumes)}, but its "
                f"processor is {declared[0]!r} reading {list(declared[1])}"
            )
        if getattr(processor, "consumer_config", None) is not None:
            raise ValueError(f"{spec.name!r}: a tuned consumer cannot join before its processor")
    except BaseException:
        joined.close()
        raise
    return run_batch_loop(processor, settings, joined=joined, **limits)


def _load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"{target!r}: expected 'module:attribute'")
    return getattr(importlib.import_module(module), attribute)

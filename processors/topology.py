"""The registry of workers, and the topology they make together.

:data:`WORKER_MODULES` lists every worker's entry module, in pipeline order; each declares a
``SPEC`` (:class:`~processors.core.worker.WorkerSpec`) and a ``run(settings, args) -> int``.
``skyloop worker NAME`` resolves NAME here (:func:`resolve`); ``skyloop topology`` prints
:func:`describe` (like Kafka Streams' ``Topology.describe()``). Loading the registry imports
only the worker modules, which import nothing heavy. The picture these rows make is
ARCHITECTURE.md, "Topology".

Invariants (checked by ``tests/test_topology.py``): names and aliases are unique; every topic
a spec names is in :data:`processors.core.records.TOPICS`; every catalogue topic is produced by
some worker and consumed by some worker.
"""

from __future__ import annotations

import importlib
import json
import textwrap
from functools import cache

from processors.core.exceptions import ConfigError
from processors.core.worker import WorkerSpec

__all__ = ["WORKER_MODULES", "describe", "render", "resolve", "worker_names", "workers"]

WORKER_MODULES: tuple[str, ...] = (
    "processors.ingest.worker",
    "processors.score.worker",
    "processors.controller.worker",
    "processors.detect.worker",
    "processors.train.worker",
    "processors.sink.worker",
)


@cache
def workers() -> tuple[WorkerSpec, ...]:
    """Every worker's spec, in :data:`WORKER_MODULES` order (names and aliases unique)."""
    specs = tuple(importlib.import_module(m).SPEC for m in WORKER_MODULES)
    names = [n for spec in specs for n in spec.names]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"worker names declared twice: {', '.join(duplicates)}")
    return specs


def worker_names(*, aliases: bool = False) -> tuple[str, ...]:
    """The workers' names (with ``aliases``: followed by every accepted former name)."""
    names = tuple(spec.name for spec in workers())
    if aliases:
        names += tuple(a for spec in workers() for a in spec.aliases)
    return names


def resolve(name: str) -> WorkerSpec:
    """The worker called ``name`` (or formerly so); ConfigError naming the accepted names."""
    for spec in workers():
        if name in spec.names:
            return spec
    accepted = ", ".join(
        spec.name + (f" (or {', '.join(spec.aliases)})" if spec.aliases else "")
        for spec in workers()
    )
    raise ConfigError(f"unknown worker {name!r}; accepted: {accepted}")


def describe() -> list[dict[str, object]]:
    """Every worker as plain data (:meth:`WorkerSpec.describe`), in pipeline order."""
    return [spec.describe() for spec in workers()]


def render(fmt: str = "table") -> str:
    """The topology as text: ``json`` (:func:`describe`), or one block per worker.

    The text form reads like Kafka Streams' ``Topology.describe()``: each worker, then what it
    consumes, produces, keeps, folds and emits, one line each, wrapped at 100 columns.
    """
    if fmt == "json":
        return json.dumps(describe(), indent=1) + "\n"
    blocks = []
    for spec in workers():
        data = spec.describe()
        folds = data["folds"]
        title = spec.name + "".join(f" (also {a})" for a in spec.aliases)
        sections = ", ".join(spec.settings_sections)
        lines = [f"worker {title}: {spec.mode}, group {spec.group}, settings {sections}"]
        lines.append(f"  {spec.summary}")
        for label, items in (
            ("consumes", spec.consumes),
            ("produces", spec.produces),
            ("keeps", spec.state),
            ("folds", (folds,) if isinstance(folds, str) else tuple(folds)),
            ("emits", spec.emits),
        ):
            text = ", ".join(items) or "-"
            lines.extend(
                textwrap.wrap(
                    text,
                    width=100,
                    initial_indent=f"  {label:<9}",
                    subsequent_indent=" " * 11,
                    break_on_hyphens=False,
                )
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"

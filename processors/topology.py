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
from functools import cache

from processors.core.exceptions import ConfigError
from processors.core.tabular import format_table
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
    """The topology as text: ``json`` (:func:`describe`), or a table, one row per worker."""
    if fmt == "json":
        return json.dumps(describe(), indent=1) + "\n"
    columns = ["worker", "mode", "consumes", "produces", "state", "folds", "emits"]
    rows = []
    for spec in workers():
        name = spec.name + "".join(f" ({a})" for a in spec.aliases)
        folds = spec.describe()["folds"]
        rows.append(
            [
                name,
                spec.mode,
                ", ".join(spec.consumes) or "-",
                ", ".join(spec.produces) or "-",
                "; ".join(spec.state) or "-",
                folds if isinstance(folds, str) else ", ".join(folds) or "-",
                ", ".join(spec.emits) or "-",
            ]
        )
    return format_table(columns, rows, "table")

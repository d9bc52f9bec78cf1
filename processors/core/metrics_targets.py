"""The /metrics endpoints of a local run, for a local Prometheus.

``skyloop run`` gives every worker (ingest included) its own free loopback port, passed to the
child as ``SKYLOOP_METRICS_PORT`` and kept across the child's restarts; the ports are named in
``<run>/stack.json`` (``"metrics": {worker: port}``) and written as a Prometheus ``file_sd``
target file, ``<run>/prometheus-targets.json`` and, for a Prometheus configured once,
``<data_dir>/prometheus-targets.json`` (the newest run's; emptied when the run ends).
``infra/prometheus/prometheus.local.yml`` scrapes that file with the shipped rules.

Each target group carries the labels ``processor`` (the worker) and ``run`` (the run folder's
name); the scrape job names ``job``, which the shipped rules match as ``skyloop.*``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from processors.core.stack import free_port

__all__ = ["TARGETS_FILE", "assign_ports", "clear_targets", "file_sd", "write_targets"]

TARGETS_FILE = "prometheus-targets.json"


def assign_ports(workers: Iterable[str]) -> dict[str, int]:
    """A distinct free loopback port per worker (free when asked; a worker binds it at start)."""
    ports: dict[str, int] = {}
    for worker in workers:
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[worker] = port
    return ports


def file_sd(ports: Mapping[str, int], run: str, host: str = "127.0.0.1") -> list[dict[str, Any]]:
    """Prometheus ``file_sd`` target groups: one per worker.

    >>> file_sd({"score": 9401}, "20261206T120000Z")
    [{'targets': ['127.0.0.1:9401'], 'labels': {'processor': 'score', 'run': '20261206T120000Z'}}]
    """
    return [
        {"targets": [f"{host}:{port}"], "labels": {"processor": worker, "run": run}}
        for worker, port in sorted(ports.items())
    ]


def _write(path: Path, groups: list[dict[str, Any]]) -> None:
    """Atomically (Prometheus re-reads the file whenever it changes)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(groups, indent=2) + "\n")
    tmp.replace(path)


def write_targets(run_dir: Path, data_dir: Path, ports: Mapping[str, int]) -> Path:
    """Write the run's target file and the data dir's copy; return the run's."""
    groups = file_sd(ports, run_dir.name)
    path = run_dir / TARGETS_FILE
    _write(path, groups)
    data_dir.mkdir(parents=True, exist_ok=True)
    _write(data_dir / TARGETS_FILE, groups)
    return path


def clear_targets(run_dir: Path, data_dir: Path) -> None:
    """At the end of a run: the data dir's file lists no target, unless a newer run owns it."""
    shared = data_dir / TARGETS_FILE
    try:
        groups = json.loads(shared.read_text())
    except (FileNotFoundError, ValueError):
        return
    if all(g.get("labels", {}).get("run") == run_dir.name for g in groups):
        _write(shared, [])

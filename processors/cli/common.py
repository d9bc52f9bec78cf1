"""What every command family shares: the common flags, settings, the run folder, the live
pipeline's broker, ISO times."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from processors.core.exceptions import ConfigError, SkyloopError

__all__ = ["add_common", "live_bootstrap", "run_dir", "settings", "utc"]


def add_common(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--data-dir``, which every command takes."""
    p.add_argument("--config", type=Path, help="YAML settings file (also $SKYLOOP_CONFIG)")
    p.add_argument("--data-dir", type=Path, help="data folder (default .skyloop)")


def settings(args: argparse.Namespace) -> Any:
    """The settings: file, environment, then the command's own flags (data dir, reference)."""
    from processors.core.config import load_settings

    return load_settings(
        getattr(args, "config", None),
        data_dir=getattr(args, "data_dir", None),
        reference_size=getattr(args, "reference_size", None),
    )


def run_dir(args: argparse.Namespace) -> Path:
    """``--run``, else the latest run of the data dir, else a worker-style data dir (chdb
    directly under it); SkyloopError when there is none."""
    from processors.local import latest_run_dir

    resolved = settings(args)
    if getattr(args, "run", None):
        return Path(args.run)
    latest = latest_run_dir(resolved.data_dir)
    if latest is None:
        # A worker-style data dir (skyloop worker sink) keeps chdb directly under it.
        if (resolved.data_dir / "clickhouse").is_dir():
            return Path(resolved.data_dir)
        raise SkyloopError(f"no run found under {resolved.data_dir}; run `skyloop run` first")
    return latest


def live_bootstrap(args: argparse.Namespace) -> tuple[str, str]:
    """Bootstrap servers and topic prefix of a running local pipeline (its ``stack.json``)."""
    import socket

    folder = run_dir(args)
    marker = folder / "stack.json"
    hint = "start `skyloop run`, or set SKYLOOP_BOOTSTRAP_SERVERS to the pipeline's Kafka"
    if not marker.is_file():
        raise SkyloopError(f"no running pipeline in {folder}: {hint}")
    stack = json.loads(marker.read_text())
    host, _, port = str(stack["bootstrap"]).rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        raise SkyloopError(f"the pipeline of {folder} is not running any more: {hint}") from None
    return str(stack["bootstrap"]), str(stack.get("topic_prefix", ""))


def utc(text: str, flag: str) -> Any:
    """An ISO 8601 time as an aware UTC datetime (naive means UTC); ConfigError naming
    ``flag`` otherwise."""
    from datetime import UTC, datetime

    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r}: accepted values are ISO 8601 times, e.g. 2026-12-01T10:00Z"
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)

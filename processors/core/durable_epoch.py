"""The hot log's epoch beside a durable broker's log, and a rotation a crash interrupted.

A durable broker (``broker_durable``) keeps its topics from one run on a data folder to the
next, and the hot log rotates them as it does the memory broker's: a rotation deletes the data
topics and creates them again, and in the new epoch offsets count from 0. Consumers key their
positions by epoch (:func:`~processors.core.retention.epoch_topic`: the controller's table), so
a run must go on in the epoch of the topics that exist, never from 0. A run's own signal
(``<run>/progress/hotlog.json``) starts afresh with each run, so
:class:`~processors.core.retention.HotLog` writes every phase to ``<data_dir>/broker-state/``
first, and a run on the folder starts from there (:func:`carry_epoch`), before any worker:

- ``open`` k: the run's signal is (k, open);
- ``hold`` k: the rotation stopped before its drain finished, and nothing was deleted (a topic
  is deleted only after the drain): it is abandoned, (k - 1, open), epoch k - 1's topics kept;
- ``release`` k: it stopped after the drain (every record handled by every stage and stored)
  and perhaps while deleting: it is finished (``settle``: the data topics deleted and created
  again, as a rotation does), then (k, open).

Invariant: the state folder is written before the run's signal at every phase, so it is never
behind what a worker has read. On a memory broker none of this runs: its log dies with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from processors.core.retention import HOLD, OPEN, RELEASE, SIGNAL_FILE, read_signal, write_signal

__all__ = ["STATE_DIR", "carry_epoch", "state_dir"]

log = logging.getLogger(__name__)

STATE_DIR = "broker-state"
"""Beside ``<data_dir>/broker`` (the storage folder: every folder in it is a bucket)."""


def state_dir(data_dir: Path) -> Path:
    """Where the durable broker's hot-log epoch is kept for ``data_dir``."""
    return data_dir.resolve() / STATE_DIR


def carry_epoch(state: Path, progress_dir: Path, settle: Callable[[], None]) -> str:
    """Start the run's signal in ``progress_dir`` from the durable epoch in ``state`` (module
    docstring); returns what was found: ``new`` (no epoch yet: 0), ``open``, ``abandoned`` (a
    held rotation) or ``finished`` (a released one, after ``settle``)."""
    if not (state / SIGNAL_FILE).is_file():
        return "new"
    epoch, phase = read_signal(state)
    found = "open"
    if phase == HOLD:
        epoch, found = epoch - 1, "abandoned"
        log.warning("hot log: rotation to epoch %d was interrupted before its drain", epoch + 1)
    elif phase == RELEASE:
        log.warning("hot log: rotation to epoch %d was interrupted after its drain", epoch)
        settle()
        found = "finished"
    write_signal(state, epoch, OPEN)
    write_signal(progress_dir, epoch, OPEN)
    return found

"""Rebuilding a lost broker's log from ClickHouse, the durable history of a run.

ClickHouse (the run's chdb, written by the sink) holds every control event with its log offset,
every image with its pixels, every score, candidate and dead letter. After the broker's log is
lost (the embedded memory broker restarted, or a whole run killed), :func:`rebuild` puts back
what the workers need, through the sink's loopback SQL endpoint (the sink owns the chdb path):

1. ``control.events``: every stored event republished in log order (``kafka_offset``), same
   event ids, each flushed alone, so every worker's fold reaches the state it had. The fold of
   the stored rows and the fold of the republished log have the same fingerprint (checked).
2. ``images.raw``: every stored image without a served score (or whose served score flagged it
   and whose candidate row is missing) re-produced from its stored pixels, in its original
   per-source order; scoring it again replaces rows by identity (ARCHITECTURE.md, "Guarantees").
3. A skip list (``<run>/resume/stored.txt``): the ids of every stored image, and the keys
   (file paths) of stored images and source dead letters, so a source read again from its start
   publishes only what never reached ClickHouse (:mod:`processors.ingest.skip` reads it).

What is not recoverable from ClickHouse: records that only the lost broker held. Images
ingested but not stored come back only by reading their source again (folders, alert files,
deterministic synthetic sources, an external topic from its committed offsets); control events
the sink had not stored come back only if their emitter decides them again (the controller's
and trainer's ids are deterministic); the controller's working windows (Faust changelogs) start
empty, from the folded control state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.control import ControlState, replay
from processors.core.exceptions import SkyloopError
from processors.core.kafka import ControlFollower, make_producer, partition_for
from processors.core.kafka import produce_control_event as _produce_event
from processors.core.records import TOPICS, ControlEventRecord, ControlParams
from processors.core.warehouse_rows import SinkSql, stored_images

__all__ = [
    "EVENTS_SQL",
    "Rebuilt",
    "events_from_rows",
    "rebuild",
    "stored_events",
]

SKIP_FILE = "resume/stored.txt"
"""The skip list, relative to the run folder: ``id <hex>`` and ``key <source>\\t<key>`` lines."""

_SERVED = "(role = 'production' OR (role = 'canary' AND calibrated))"
_TO_REPRODUCE = f"""
image_id NOT IN (SELECT key FROM dead_letters WHERE original_topic = 'images.raw'
                 AND key IS NOT NULL)
AND (image_id NOT IN (SELECT image_id FROM scores WHERE {_SERVED})
     OR (image_id IN (SELECT image_id FROM scores WHERE {_SERVED} AND is_candidate)
         AND image_id NOT IN (SELECT image_id FROM candidates)))
"""
"""Stored images to score again: no served score (or a flag without its candidate row)."""
_EVENT = "skyloop.ControlEvent"


def _utc(text: str | datetime) -> datetime:
    at = text if isinstance(text, datetime) else datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


EVENTS_SQL = (
    "SELECT event_id, type, subject, at, issued_by, params, evidence, caused_by "
    "FROM control_events FINAL ORDER BY kafka_offset, event_id"
)
"""The stored control log in log order (rows for :func:`events_from_rows`)."""


def stored_events(sql: SinkSql) -> list[ControlEventRecord]:
    """Every stored control event, in log order, as the workers fold it."""
    return events_from_rows(sql.rows(EVENTS_SQL))


def events_from_rows(rows: list[dict[str, Any]]) -> list[ControlEventRecord]:
    """Control events from ``control_events`` rows (``at`` and ``until`` as ISO text or
    datetimes), as they were on the topic."""
    events = []
    for r in rows:
        params = json.loads(r["params"] or "{}")
        if params.get("until") is not None:
            params["until"] = _utc(params["until"])
        events.append(
            ControlEventRecord(
                event_id=r["event_id"],
                type=r["type"],
                subject=r["subject"],
                at=_utc(r["at"]),
                issued_by=r["issued_by"],
                params=cast(ControlParams, params),
                evidence={k: float(v) for k, v in (r["evidence"] or {}).items()},
                caused_by=list(r["caused_by"] or []),
            )
        )
    return events


@dataclass(frozen=True)
class Stored:
    """What ClickHouse held when the skip list was written."""

    images: int
    dead_letters: int
    """Distinct source dead letters (items a source could not read)."""
    skip_file: Path

    def with_ingested(self, counts: dict[str, Any]) -> dict[str, Any]:
        """Ingest's progress ``counts`` with what was stored before it (and skipped by it) added:
        every item of the run once, as ClickHouse counts them. Counts that already include
        them (``stored_before_resume`` set) are returned as they are.

        >>> Stored(160, 1, Path("skip")).with_ingested({"images": 80, "done": True})["images"]
        240
        """
        if "stored_before_resume" in counts:
            return counts
        before = {"images": self.images, "dead_letter_keys": self.dead_letters}
        published = {
            "images": int(counts.get("images", counts.get("published", 0))),
            "dead_letter_keys": int(counts.get("dead_letter_keys", counts.get("dead_letters", 0))),
        }
        return {
            **counts,
            **{key: published[key] + n for key, n in before.items()},
            "stored_before_resume": before,
        }


@dataclass(frozen=True)
class Rebuilt:
    """What :func:`rebuild` put back, for the run's output and the tests."""

    events: int
    fingerprint: str
    """Fingerprint of the fold of the stored events (= that of the republished log)."""
    reproduced: int
    stored: Stored


def write_skip_list(run_dir: Path, sql: SinkSql | None = None) -> Stored:
    """Write ``<run>/resume/stored.txt`` from the run's ClickHouse (module docstring, 3)."""
    sql = sql or SinkSql(run_dir)
    path = run_dir / SKIP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    images = list(sql.pages("DISTINCT image_id, source, provenance['path'] AS path"))
    letters = sql.rows(
        "SELECT DISTINCT substring(original_topic, 8) AS source, key FROM dead_letters "
        "WHERE startsWith(original_topic, 'source:') AND key IS NOT NULL"
    )
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as out:
        for r in images:
            out.write(f"id {r['image_id']}\n")
            if r["path"]:
                out.write(f"key {r['source']}\t{r['path']}\n")
        for r in letters:
            out.write(f"key {r['source']}\t{r['key']}\n")
    tmp.replace(path)
    distinct = len({r["image_id"] for r in images})
    return Stored(distinct, len({(r["source"], r["key"]) for r in letters}), path)


def rebuild(settings: Settings, bootstrap: str, run_dir: Path) -> Rebuilt:
    """Republish the control log and re-produce unserved images onto an empty broker.

    The topics must exist and be empty of these records (a fresh broker). Raises
    :class:`SkyloopError` when the republished log does not fold to the stored state.
    """
    sql = SinkSql(run_dir)
    codec = default_codec()
    events = stored_events(sql)
    # the state the workers will fold: each event as they decode it from the topic
    expected = replay(
        (i, cast(ControlEventRecord, codec.decode(codec.encode(e, _EVENT), _EVENT)))
        for i, e in enumerate(events)
    )
    producer = make_producer(settings, bootstrap)
    for event in events:
        _produce_event(producer, settings, event, codec)
    _check_fold(settings, bootstrap, expected, len(events))
    # in their original per-source order (partition, then as fetched)
    order = sorted(
        (r["kafka_partition"], r["fetched_at"], r["kafka_offset"], r["image_id"])
        for r in sql.pages(
            "DISTINCT image_id, kafka_partition, toString(fetched_at) AS fetched_at, kafka_offset",
            _TO_REPRODUCE,
        )
    )
    ids = list(dict.fromkeys(r[3] for r in order))
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    partitions = TOPICS["images.raw"].partitions
    reproduced = 0
    for record in stored_images(sql, ids):
        producer.produce(
            settings.topic("images.raw"),
            key=record["image_id"].encode(),
            value=codec.encode(record, "skyloop.ImageRecord"),
            partition=partition_for(record["source"], partitions),
            on_delivery=on_delivery,
        )
        producer.poll(0)
        reproduced += 1
    if producer.flush(60) != 0 or errors:
        raise SkyloopError(f"resume: stored images not re-produced: {errors[:3]}")
    return Rebuilt(len(events), expected.fingerprint(), reproduced, write_skip_list(run_dir, sql))


def _check_fold(settings: Settings, bootstrap: str, expected: ControlState, n: int) -> None:
    """The republished log folds to ``expected`` (a follower reads it back from offset 0)."""
    follower = ControlFollower(settings, bootstrap).start()
    try:
        if not follower.wait_for_offset(n, timeout_s=60):
            raise SkyloopError(f"resume: the republished control log did not reach {n} events")
        got = follower.state
    finally:
        follower.close()
    if got.fingerprint() != expected.fingerprint():
        raise SkyloopError(
            "resume: the republished control log folds to another state than ClickHouse's "
            f"control_events ({got.fingerprint()[:12]} != {expected.fingerprint()[:12]})"
        )

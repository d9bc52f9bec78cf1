"""The chaos checker: every record read back from the topics, judged against the ingest ledger.

Inputs: what the :class:`~tools.chaos.tap.Tap` read from ``images.raw``, ``scores``,
``candidates`` and ``images.dlq`` (every message, before any deduplication), the disruption
:class:`Window` s of the run (kills, pauses, restarts, rebalances, each naming the worker it
disrupted), the ingest processor's ledger (its progress counters) and the run's ClickHouse
tables (:class:`Stored`).

Words, precisely:

- **Identity** of a record: ``image_id`` on ``images.raw``; ``(image_id, model_version, role)``
  on ``scores``; ``(image_id, model_version)`` on ``candidates`` (ARCHITECTURE.md, "Topology").
  Each message on a topic is one **copy** of its identity.
- **Expected copies** of an identity: one per copy of its input. A scores identity's input is
  the image's copies on ``images.raw`` (a source may deliver the same cutout twice: ingest counts
  those repeats, ``published - images``); a candidate's input is the flagged copies of its image's
  served score (role production or canary, ``is_candidate``).
- A **redelivery** is a copy beyond the expected ones that is explained by a disruption of the
  worker that produced the topic (``ingest``, ``score``, ``detect``) or of the broker: a window
  ``W`` of that worker with ``W.start <= this copy's produce time`` and ``the previous copy's
  produce time <= W.end``. At-least-once delivery allows redeliveries; they are reported
  (``redelivered``), and those that served a different output than the first copy (another
  score, candidate flag or control offset: the image was rescored under a newer control state)
  are reported apart (``rescored``).
- A **duplicate** is what must never happen, whatever the faults:
  (a) a copy beyond the expected ones that no disruption explains: the same record produced
  twice by a healthy worker; or
  (b) an image served twice: more than one production score identity for one image (two model
  versions, or a copy under another role) on ``scores``, or more than one production row for it
  in ClickHouse under ``FINAL`` (two distinct rows that no identity collapses).
  ``duplicates`` counts (a) per copy and (b) per image.
- A **loss** is an image of the ledger without its outputs: ingest published fewer distinct
  images than its counter says; an image of ``images.raw`` not stored in ``images``; an image
  with no production score on ``scores`` or none stored in ``scores``; an image whose served
  score is flagged with no candidate on ``candidates`` or none stored. An image dead-lettered
  (a dead letter keyed by its id) is accounted for, not lost. ``losses`` counts distinct images.
- The tap is **complete** when every Kafka position the sink stored (``kafka_partition``,
  ``kafka_offset`` of every row, before ``FINAL``) is among the positions it read; an incomplete
  tap makes the verdict unusable (``tap_missing`` > 0 fails the run).

Undecodable messages (poison) have no identity: they are counted per topic and judged by the
scenario that injected them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tools.chaos.tap import Seen

__all__ = ["PRODUCERS", "Stored", "Verdict", "Window", "check", "load_stored"]

PRODUCERS = {"images.raw": "ingest", "scores": "score", "candidates": "detect"}
"""The worker whose disruption can explain a redelivered copy on each topic."""
SERVED_ROLES = ("production", "canary")


@dataclass(frozen=True)
class Window:
    """A disruption of ``worker`` (or of everyone, for ``broker``) from ``start`` to ``end``,
    wall-clock seconds (``time.time()``), ``end`` including the grace for redeliveries."""

    worker: str
    start: float
    end: float
    what: str = ""


@dataclass
class Stored:
    """What the run's ClickHouse holds (``FINAL`` unless said otherwise)."""

    images: set[str] = field(default_factory=set)
    production: dict[str, set[str]] = field(default_factory=dict)
    """image_id -> model versions of its production rows."""
    production_rows: Counter[str] = field(default_factory=Counter)
    """image_id -> production rows under FINAL (more than one: served twice)."""
    candidates: set[tuple[str, str]] = field(default_factory=set)
    positions: set[tuple[str, int, int]] = field(default_factory=set)
    """(topic, partition, offset) of every stored row before FINAL."""
    copies_before_final: int = 0
    """rows before FINAL beyond rows under FINAL (a lower bound: merges may have run)."""


@dataclass
class Verdict:
    images_in: int = 0
    images_out: int = 0
    duplicates: int = 0
    losses: int = 0
    redelivered: int = 0
    rescored: int = 0
    served_twice: int = 0
    dead_lettered: int = 0
    poison: Counter[str] = field(default_factory=Counter)
    tap_missing: int = 0
    copies_before_final: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.duplicates == 0 and self.losses == 0 and self.tap_missing == 0

    def note(self, text: str) -> None:
        if len(self.details) < 20:
            self.details.append(text)


def _explained(windows: Iterable[Window], producer: str, previous_s: float, this_s: float) -> bool:
    return any(
        w.worker in (producer, "broker") and w.start <= this_s and previous_s <= w.end
        for w in windows
    )


def _copies(
    seen: list[Seen],
    topic: str,
    expected: Mapping[tuple[Any, ...], int],
    windows: list[Window],
    verdict: Verdict,
) -> None:
    """Judge every copy of ``topic`` beyond its identity's expected count (module docstring)."""
    by_identity: dict[tuple[Any, ...], list[Seen]] = defaultdict(list)
    for s in seen:
        if s.topic == topic and s.identity is not None:
            by_identity[s.identity].append(s)
    producer = PRODUCERS[topic]
    for identity, copies in by_identity.items():
        copies.sort(key=lambda s: (s.produced_ms, s.partition, s.offset))
        for k in range(max(1, expected.get(identity, 1)), len(copies)):
            previous, this = copies[k - 1], copies[k]
            if _explained(windows, producer, previous.produced_ms / 1000, this.produced_ms / 1000):
                verdict.redelivered += 1
                if this.output != copies[0].output:
                    verdict.rescored += 1
            else:
                verdict.duplicates += 1
                verdict.note(
                    f"duplicate on {topic}: {identity} produced again at offset "
                    f"{this.partition}:{this.offset}, {this.produced_ms - previous.produced_ms} ms "
                    f"after {previous.partition}:{previous.offset}, no disruption of {producer}"
                )


def check(
    seen: list[Seen],
    windows: list[Window],
    ingest: Mapping[str, Any],
    stored: Stored,
) -> Verdict:
    """Judge a run: duplicates, losses, redeliveries (module docstring for each)."""
    verdict = Verdict(copies_before_final=stored.copies_before_final)
    for s in seen:
        if s.identity is None:
            verdict.poison[s.topic] += 1
    images = Counter(str(s.image_id) for s in seen if s.topic == "images.raw" and s.identity)
    dead = {s.key for s in seen if s.topic == "images.dlq" and s.key}
    verdict.images_in = int(ingest.get("images", ingest.get("published", 0)))

    # copies: images (ingest's own repeats expected), scores (one per input copy), candidates
    repeats = int(ingest.get("published", 0)) - int(ingest.get("images", 0))
    image_expected = {(i,): 1 for i in images}
    if repeats > 0:  # the source repeated some cutouts: that many extra copies are expected
        for i, n in sorted(images.items(), key=lambda kv: -kv[1]):
            take = min(n - 1, repeats)
            image_expected[(i,)] += take
            repeats -= take
    _copies(seen, "images.raw", image_expected, windows, verdict)
    score_ids = {s.identity for s in seen if s.topic == "scores" and s.identity}
    _copies(seen, "scores", {i: images.get(i[0], 1) for i in score_ids if i}, windows, verdict)
    flagged = Counter(s.identity[:2] for s in seen if s.flagged and s.identity)
    _copies(seen, "candidates", flagged, windows, verdict)

    # served twice: one image, several production identities (topic) or rows (store)
    production: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    for s in seen:
        if s.topic == "scores" and s.identity and s.identity[2] == "production":
            production[s.identity[0]].add(s.identity)
    twice = {i for i, ids in production.items() if len(ids) > 1}
    twice |= {i for i, n in stored.production_rows.items() if n > 1}
    twice |= {i for i, versions in stored.production.items() if len(versions) > 1}
    for image in sorted(twice)[:5]:
        verdict.note(f"served twice: image {image} has production scores {production[image]}")
    verdict.served_twice = len(twice)
    verdict.duplicates += len(twice)

    # losses against the ledger
    lost: dict[str, str] = {}
    shortfall = max(0, verdict.images_in - len(images))  # counted by ingest, never on the topic
    if shortfall:
        verdict.note(f"ingest counted {verdict.images_in} images, {len(images)} on images.raw")
    candidates = {s.identity[:2] for s in seen if s.topic == "candidates" and s.identity}
    for image in images:
        if image in dead:
            verdict.dead_lettered += 1
            continue
        if image not in stored.images:
            lost[image] = "not stored in images"
        elif image not in production:
            lost[image] = "no production score on scores"
        elif image not in stored.production:
            lost[image] = "production score not stored"
    for image, version in flagged:
        if image in dead or image in lost:
            continue
        if (image, version) not in candidates:
            lost[image] = "flagged, no candidate on candidates"
        elif (image, version) not in stored.candidates:
            lost[image] = "candidate not stored"
    for image, why in sorted(lost.items())[:5]:
        verdict.note(f"lost: {image}: {why}")
    verdict.losses = len(lost) + shortfall
    verdict.images_out = sum(1 for i in images if i in stored.production)

    # completeness of the tap against what the sink stored
    read = {(s.topic, s.partition, s.offset) for s in seen}
    missing = stored.positions - read
    verdict.tap_missing = len(missing)
    if missing:
        verdict.note(f"the tap missed {len(missing)} stored messages, e.g. {sorted(missing)[:3]}")
    return verdict


def load_stored(client: Any) -> Stored:
    """:class:`Stored` from a ClickHouse client (a chdb or server connection)."""

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in client.query(sql).result_rows]

    stored = Stored()
    stored.images = {r[0] for r in rows("SELECT image_id FROM images FINAL")}
    for image, version in rows(
        "SELECT image_id, model_version FROM scores FINAL WHERE role = 'production'"
    ):
        stored.production.setdefault(image, set()).add(version)
        stored.production_rows[image] += 1
    stored.candidates = set(rows("SELECT image_id, model_version FROM candidates FINAL"))
    tables = {"images": "images.raw", "scores": "scores", "candidates": "candidates"}
    for table, topic in tables.items():
        positions = rows(f"SELECT DISTINCT kafka_partition, kafka_offset FROM {table}")
        stored.positions.update((topic, int(p), int(o)) for p, o in positions)
        before = rows(f"SELECT count() FROM {table}")[0][0]
        after = rows(f"SELECT count() FROM {table} FINAL")[0][0]
        stored.copies_before_final += int(before) - int(after)
    return stored

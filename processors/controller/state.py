"""The controller's durable state: per-source heads, per-(model, source) lanes, the ring.

Plain data with canonical serialisation, so the Faust app can keep it in a changelog-backed
table (one value per key) and a restarted controller resumes exactly where the last one left
off. Nothing here decides anything; :mod:`processors.controller.controller` does.

- :class:`RingEntry`: one scored image of a lane (its features as float16, raw energy, ensemble
  score, whether it was flagged, the calibration that scored it). A lane keeps its last
  ``capacity`` entries in a ring (slot = ``seq % capacity``): the calibration reference window
  and the post-drift data a recalibration is built from, one table key per entry.
- :class:`LaneState`: a (model, source)'s calibration, drift window, hysteresis, sequential
  statistics, the images cleared for refinement, and decay.
- :class:`SourceState`: a source's lanes, the last applied input offsets (the idempotency guard:
  a redelivered record at or below them is skipped; kept per hot-log epoch of a topic, whose
  offsets restart at 0: ``scores#3:2``), and the windows of the rebalancing and back-off
  policies.

Example:
    >>> import numpy as np
    >>> entry = RingEntry(3, "img", np.ones(4, "<f2").tobytes(), -2.5, 0.4, False, "cal-1")
    >>> RingEntry.from_bytes(entry.to_bytes()) == entry
    True
    >>> state = SourceState("sky")
    >>> state.lane("bb@1").seq
    0
    >>> SourceState.from_bytes(state.to_bytes()) == state
    True
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["LaneState", "MemoryRing", "RingEntry", "SourceState", "StatsWindow"]

_ENTRY = struct.Struct("<qddBBH")  # seq, energy, score, flagged, served, len(image_id)


@dataclass(frozen=True)
class RingEntry:
    seq: int
    image_id: str
    features: bytes
    energy: float
    score: float
    flagged: bool
    calibration_id: str | None
    served: bool = True

    def feature_array(self) -> NDArray[np.float32]:
        return np.frombuffer(self.features, dtype="<f2").astype(np.float32)

    def to_bytes(self) -> bytes:
        image_id = self.image_id.encode()
        calibration = (self.calibration_id or "").encode()
        head = _ENTRY.pack(
            self.seq, self.energy, self.score, int(self.flagged), int(self.served), len(image_id)
        )
        return b"".join(
            (head, image_id, struct.pack("<H", len(calibration)), calibration, self.features)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RingEntry:
        seq, energy, score, flagged, served, id_len = _ENTRY.unpack_from(data, 0)
        offset = _ENTRY.size
        image_id = data[offset : offset + id_len].decode()
        offset += id_len
        (cal_len,) = struct.unpack_from("<H", data, offset)
        offset += 2
        calibration = data[offset : offset + cal_len].decode() or None
        return cls(
            seq,
            image_id,
            bytes(data[offset + cal_len :]),
            energy,
            score,
            bool(flagged),
            calibration,
            bool(served),
        )


@dataclass
class StatsWindow:
    """Aggregates of one tumbling time window of a lane's served scores.

    ``score_hist``: counts of ensemble scores in 20 equal bins over [0, 1].
    """

    start: str = ""
    scored: int = 0
    flagged: int = 0
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    score_hist: list[int] = field(default_factory=lambda: [0] * 20)

    def add(self, score: float, flagged: bool, latency_ms: float) -> None:
        self.scored += 1
        self.flagged += int(flagged)
        self.latency_sum_ms += latency_ms
        self.latency_max_ms = max(self.latency_max_ms, latency_ms)
        self.score_hist[min(int(max(score, 0.0) * 20), 19)] += 1


@dataclass
class LaneState:
    """One (model, source): see the module docstring. ``seq`` counts ring entries written."""

    model: str
    source: str
    seq: int = 0
    epoch_start: int = 0
    calibration_id: str | None = None
    profile_id: str | None = None
    reference_rows: int = 0
    base_thresholds: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    served: int = 0
    window: int = 0
    hysteresis: dict[str, Any] = field(default_factory=dict)
    drifts: int = 0
    pending_from: int | None = None
    pending_cause: str | None = None
    clearance: dict[str, int] = field(default_factory=dict)
    sequential: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, float] = field(default_factory=dict)
    stats: StatsWindow = field(default_factory=StatsWindow)
    windows: list[str] = field(default_factory=list)
    revision: dict[str, Any] = field(default_factory=dict)
    """The revision waiting since the last drift's recalibration
    (:class:`~processors.policies.revision.PendingRevision` as a dict; empty: none)."""
    revisions: int = 0
    """Revisions made on this lane; the next one is numbered ``revisions + 1``."""
    revise_from: int | None = None
    """The change point of the last drift, until its epoch's first refinement, which decides
    the images since it again (a reference of 96 images or more, against the drift's 64)."""
    judging: dict[str, str] = field(default_factory=dict)
    """After a refinement, until the first score made under it: the calibration it replaced
    and that calibration's profile (``{"calibration": ..., "profile": ...}``). Its scores,
    still in flight to the controller, go on feeding the drift tests against its own profile
    (a refinement does not blind them for the time it takes to reach the scorer); the first
    score under another calibration restarts the tests on the one in force (a second
    refinement that came meanwhile: its predecessor's scores are skipped). Empty: none."""

    @property
    def judged_calibration(self) -> str | None:
        """The calibration whose scores the drift tests judge now."""
        return self.judging.get("calibration", self.calibration_id)

    @property
    def judged_profile(self) -> str | None:
        """The profile the drift tests judge against now."""
        return self.judging.get("profile", self.profile_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LaneState:
        values = dict(data)
        values["stats"] = StatsWindow(**values.get("stats", {}))
        return cls(**values)


@dataclass
class SourceState:
    """One source: its lanes and source-level policy windows; see the module docstring."""

    source: str
    offsets: dict[str, int] = field(default_factory=dict)
    lanes: dict[str, LaneState] = field(default_factory=dict)
    items: int = 0
    flagged: int = 0
    errors: int = 0
    backoff_items: int = 0
    backoff_errors: int = 0
    weight: float | None = None
    pauses: int = 0
    rebalances: int = 0

    def lane(self, model: str) -> LaneState:
        if model not in self.lanes:
            self.lanes[model] = LaneState(model, self.source)
        return self.lanes[model]

    def seen(self, topic: str, partition: int, offset: int) -> bool:
        """Whether the record at this position was applied already (redelivered)."""
        return offset <= self.offsets.get(f"{topic}:{partition}", -1)

    def mark(self, topic: str, partition: int, offset: int) -> None:
        key = f"{topic}:{partition}"
        if key not in self.offsets:  # a new hot-log epoch of the topic: forget the older ones
            base = topic.split("#")[0]
            stale = [k for k in self.offsets if k.split(":")[0].split("#")[0] == base]
            for k in stale:
                if k.split(":")[0] != topic:
                    del self.offsets[k]
        self.offsets[key] = max(offset, self.offsets.get(key, -1))

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SourceState:
        values = json.loads(data)
        values["lanes"] = {k: LaneState.from_dict(v) for k, v in values["lanes"].items()}
        return cls(**values)


class MemoryRing:
    """A :class:`~processors.controller.controller.Ring` in a dict (tests, offline replays).

    Keeps the same slots a table-backed ring does, so both hold exactly the last ``capacity``
    entries of each lane.
    """

    def __init__(self) -> None:
        self.slots: dict[tuple[str, str, int], RingEntry] = {}
        self._ids: dict[tuple[str, str], dict[str, int]] = {}

    def put(self, source: str, model: str, entry: RingEntry, capacity: int) -> None:
        key = (source, model, entry.seq % capacity)
        ids = self._ids.setdefault((source, model), {})
        old = self.slots.get(key)
        if old is not None and ids.get(old.image_id) == old.seq:
            del ids[old.image_id]
        self.slots[key] = entry
        ids[entry.image_id] = entry.seq

    def get(self, source: str, model: str, seq: int, capacity: int) -> RingEntry | None:
        entry = self.slots.get((source, model, seq % capacity))
        return entry if entry is not None and entry.seq == seq else None

    def seq_of(self, source: str, model: str, image_id: str, capacity: int) -> int | None:
        return self._ids.get((source, model), {}).get(image_id)

"""The parts of resume that need no full run: which run is resumable, the skip list, the
control log's round trip through ClickHouse rows, and the fold check on a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.control import replay
from processors.core.events import EventType, new_event
from processors.core.exceptions import SkyloopError
from processors.core.kafka import ensure_topics, make_producer, produce_control_event
from processors.ingest.files.folder import FolderSource
from processors.ingest.skip import StoredSkip
from processors.ingest.sources.items import RawImage, SourceFailure, image_id_for
from processors.resume import RunArgs, mark_finished, unfinished_run
from processors.resume_log import _check_fold, events_from_rows
from processors.sink.rows import control_event_row


def _run(data: Path, stamp: str, *, args: bool = True, finished: bool = False) -> Path:
    folder = data / "runs" / stamp
    folder.mkdir(parents=True)
    if args:
        RunArgs(["dir:x"], None, pid=2**22 + 12345).write(folder)
    if finished:
        mark_finished(folder)
    return folder


def _started(argv: list[str]) -> subprocess.Popen[bytes]:
    """``argv`` started, once it runs as itself (exec done, so /proc shows its command)."""
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 10
    while argv[-1].encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


def test_the_newest_unfinished_run_is_resumed(tmp_path: Path) -> None:
    with pytest.raises(SkyloopError, match="no runs under"):
        unfinished_run(tmp_path)
    _run(tmp_path, "20260101T000000Z", finished=True)
    with pytest.raises(SkyloopError, match=r"all 1 runs .* finished"):
        unfinished_run(tmp_path)
    crashed = _run(tmp_path, "20260102T000000Z")
    _run(tmp_path, "20260103T000000Z", finished=True)
    _run(tmp_path, "20260104T000000Z", args=False)  # predates resumable runs
    assert unfinished_run(tmp_path) == crashed.resolve()
    assert RunArgs.read(crashed).sources == ["dir:x"]
    # a run whose supervisor still lives is never resumed beside itself ...
    alive = _started([sys.executable, "-c", "import time; time.sleep(60)", "skyloop"])
    try:
        RunArgs(["dir:x"], None, pid=alive.pid).write(crashed)
        with pytest.raises(SkyloopError, match="still running"):
            unfinished_run(tmp_path)
    finally:
        alive.kill()
        alive.wait()
    # ... but a pid reused by another program does not hold it
    other = _started(["sleep", "60"])
    try:
        RunArgs(["dir:x"], None, pid=other.pid).write(crashed)
        assert unfinished_run(tmp_path) == crashed.resolve()
    finally:
        other.kill()
        other.wait()


def _image(source: str, pixels: bytes) -> RawImage:
    return RawImage(source, "local", "png", pixels, 1, 1, 1, datetime.now(UTC))


def test_stored_items_are_skipped_by_id_and_files_by_path(tmp_path: Path) -> None:
    stored = _image("dir", b"stored")
    new = _image("dir", b"new")
    skip_file = tmp_path / "stored.txt"
    skip_file.write_text(
        f"id {image_id_for('dir', b'stored')}\nkey dir\tbad.png\nkey dir\t0001.png\n"
    )
    skip = StoredSkip.read(skip_file)
    failure = SourceFailure("dir", "bad.png", b"", "BadImageFile", "no")
    other = SourceFailure("dir", "other.png", b"", "BadImageFile", "no")
    assert list(skip.filter(iter([stored, new, failure, other]))) == [new, other]
    assert skip.skipped == 2

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        pixels = np.full((8, 8), 10 * i, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    source = FolderSource(folder)
    skip.attach(source)
    paths = [item.provenance["path"] for item in source if isinstance(item, RawImage)]
    assert paths == ["0000.png", "0002.png"]  # 0001.png was not read at all
    assert source.stats.snapshot()["skipped_stored"] == 1
    assert source.stats.snapshot()["files"] == 2


_EVENT = "skyloop.ControlEvent"


def _events() -> list:  # type: ignore[type-arg]
    until = datetime(2026, 12, 1, 10, 0, tzinfo=UTC) + timedelta(minutes=5)
    return [
        new_event(EventType.SOURCE_WEIGHTS_SET, "pipeline", "controller", {"weights": {"a": 2}}),
        new_event(EventType.SOURCE_PAUSED, "a", "operator:x", {"reason": "errors", "until": until}),
        new_event(EventType.THRESHOLD_SET, "a", "operator:x", {"value": 0.9}),
    ]


def test_control_events_round_trip_through_their_rows() -> None:
    """What the sink stores folds back to the same state (``until`` included)."""
    events = _events()
    columns = ("event_id", "type", "subject", "at", "issued_by", "params", "x", "y", "z")
    rows = []
    for offset, event in enumerate(events):
        row = control_event_row(event, ("control.events", 0, offset))
        stored = dict(zip(columns, row[:6], strict=False))
        stored.update(evidence=row[11], caused_by=row[12])
        stored["at"] = stored["at"].isoformat()  # as the sink's SQL endpoint answers
        rows.append(stored)
    back = events_from_rows(rows)
    assert replay(enumerate(back)).fingerprint() == replay(enumerate(events)).fingerprint()
    # and through Avro, as it is republished
    codec = default_codec()
    for event in back:
        codec.encode(event, "skyloop.ControlEvent")
    assert json.loads(rows[1]["params"])["until"].endswith("Z")


def test_the_fold_check_catches_a_log_that_folds_elsewhere(
    settings: Settings, kafka_bootstrap: str
) -> None:
    events = _events()
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    for event in events:
        produce_control_event(producer, settings, event)
    codec = default_codec()
    events = [codec.decode(codec.encode(e, _EVENT), _EVENT) for e in events]  # as folded
    _check_fold(settings, kafka_bootstrap, replay(enumerate(events)), len(events))
    # injected fault: the stored log lacks the pause that the republished one has
    missing = [events[0], events[2]]
    with pytest.raises(SkyloopError, match="folds to another state"):
        _check_fold(settings, kafka_bootstrap, replay(enumerate(missing)), len(events))

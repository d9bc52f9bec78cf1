"""The ``dir:`` source in a hostile folder: symlinks out of it, symlink loops, dangling links,
FIFOs, unreadable files and folders, huge files, files still being written. Every one is a
failure with its reason or is read as an image; the iteration neither hangs nor stops."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from processors.core.imaging import MAX_PIXEL_BYTES, encode_png
from processors.ingest.files.folder import FolderSource
from processors.ingest.sources import source_from_spec
from processors.ingest.sources.items import RawImage, SourceFailure, SourceItem
from processors.ingest.ztf.files import ZtfFileSource


def _png(path: Path, value: int = 9) -> bytes:
    data = encode_png(np.full((16, 16), value, np.uint8))
    path.write_bytes(data)
    return data


def _by_key(items: list[SourceItem]) -> dict[str, SourceItem]:
    return {i.key if isinstance(i, SourceFailure) else i.provenance["path"]: i for i in items}


def _iterate(source: FolderSource, timeout_s: float = 20.0) -> list[SourceItem]:
    """Iterate in a thread, so that a hang fails the test instead of blocking it."""
    out: list[SourceItem] = []
    worker = threading.Thread(target=lambda: out.extend(source), daemon=True)
    worker.start()
    worker.join(timeout_s)
    assert not worker.is_alive(), "the folder source hung"
    return out


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    _png(outside / "secret.png", 200)
    root = tmp_path / "watched"
    (root / "night").mkdir(parents=True)
    _png(root / "night" / "ok.png")
    (root / "escape.png").symlink_to(outside / "secret.png")  # a file link leaving the folder
    (root / "escape_dir").symlink_to(outside)  # a folder link leaving it
    (root / "loop").symlink_to(root)  # a loop
    (root / "night" / "alias.png").symlink_to(root / "night" / "ok.png")  # a link inside
    (root / "dangling.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(root / "pipe.png")  # opening it for reading would block forever
    with (root / "huge.fits").open("wb") as huge:  # sparse: never written out
        huge.truncate(8 * MAX_PIXEL_BYTES)
    return root


def test_hostile_entries_are_failures_with_reasons_and_nothing_hangs(hostile: Path) -> None:
    source = FolderSource(hostile)
    items = _by_key(_iterate(source))
    assert isinstance(items["night/ok.png"], RawImage)
    assert isinstance(items["night/alias.png"], RawImage)  # inside the folder: read
    assert items["night/alias.png"].pixels == items["night/ok.png"].pixels  # type: ignore[union-attr]
    escape = items["escape.png"]
    assert isinstance(escape, SourceFailure) and escape.error_class == "SymlinkOutsideFolder"
    assert "leaves the watched folder" in escape.message and escape.raw == b""
    dangling = items["dangling.png"]
    assert isinstance(dangling, SourceFailure) and dangling.error_class == "UnreadableFile"
    assert "cannot be resolved" in dangling.message
    pipe = items["pipe.png"]
    assert isinstance(pipe, SourceFailure) and "not a regular file" in pipe.message
    huge = items["huge.fits"]
    assert isinstance(huge, SourceFailure) and huge.error_class == "OversizedFile"
    assert len(huge.raw) == MAX_PIXEL_BYTES  # the head only, for the dead letter
    # the folder link and the loop are not descended: nothing under them is read
    assert not any(key.startswith(("escape_dir/", "loop/")) for key in items)
    assert len(items) == 6
    stats = source.stats.snapshot()
    assert stats["files"] == 6 and stats["yielded"] == 2 and stats["failed"] == 4


def test_a_glob_does_not_follow_a_loop_nor_leave_the_folder(hostile: Path) -> None:
    source = source_from_spec(f"dir:{hostile}/**/*.png")
    items = _by_key(_iterate(source))  # type: ignore[arg-type]
    assert {k for k, i in items.items() if isinstance(i, RawImage)} == {
        "night/ok.png",
        "night/alias.png",
    }
    refused = {k: i.error_class for k, i in items.items() if isinstance(i, SourceFailure)}
    assert refused == {
        "escape.png": "SymlinkOutsideFolder",
        "dangling.png": "UnreadableFile",
        "pipe.png": "UnreadableFile",
    }
    # glob's ** follows folder links (the loop 40 levels deep): what lies under one is skipped
    assert not any(key.startswith(("escape_dir/", "loop/")) for key in items)


def test_ztf_files_refuse_a_link_leaving_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.avro"
    outside.write_bytes(b"not read")
    root = tmp_path / "alerts"
    root.mkdir()
    (root / "night.avro").symlink_to(outside)
    (failure,) = list(ZtfFileSource(root))
    assert isinstance(failure, SourceFailure)
    assert failure.error_class == "SymlinkOutsideFolder" and failure.raw == b""


def _as_nobody(root: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    os.setgid(65534)
    os.setuid(65534)
    out.put(list(FolderSource(root)))


def test_unreadable_files_and_folders_are_reported_and_the_rest_read() -> None:
    """Permission denied, for real: as root the walk runs in a child that drops to nobody."""
    root = Path(tempfile.mkdtemp(prefix="skyloop-perm-"))
    try:
        root.chmod(0o755)
        _png(root / "a.png", 1)
        _png(root / "b.png", 2)
        (root / "b.png").chmod(0o000)
        (root / "locked").mkdir()
        _png(root / "locked" / "c.png", 3)
        (root / "locked").chmod(0o000)
        _png(root / "z.png", 4)
        if os.geteuid() == 0:
            ctx = multiprocessing.get_context("fork")
            queue = ctx.Queue()
            child = ctx.Process(target=_as_nobody, args=(str(root), queue))
            child.start()
            items = queue.get(timeout=30)
            child.join(10)
        else:
            items = list(FolderSource(root))
        by_key = _by_key(items)
        assert {k for k, i in by_key.items() if isinstance(i, RawImage)} == {"a.png", "z.png"}
        denied = by_key["b.png"]
        assert isinstance(denied, SourceFailure) and denied.error_class == "UnreadableFile"
        assert "PermissionError" in denied.message
        locked = by_key["locked"]
        assert isinstance(locked, SourceFailure) and locked.error_class == "UnreadableFolder"
        assert "PermissionError" in locked.message
    finally:
        (root / "locked").chmod(0o755)
        shutil.rmtree(root)


def test_watch_rereads_a_file_that_changed_while_it_was_read(tmp_path: Path) -> None:
    """A writer appending while the file is read: the half-written read is not dead-lettered;
    the file is read again once it has settled, and yields the whole image."""
    whole = encode_png(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8))
    stop = threading.Event()
    source = FolderSource(tmp_path, watch=True, poll_interval_s=0.05, stop=stop)
    target = tmp_path / "slow.png"
    original_read = Path.read_bytes
    writes = iter([whole[: len(whole) // 2]])

    def read_while_writing(self: Path) -> bytes:
        data = original_read(self)
        if self == target:
            chunk = next(writes, None)
            if chunk is not None:  # the writer lands its second half during the first read
                time.sleep(0.01)
                with self.open("ab") as f:
                    f.write(whole[len(chunk) :])
        return data

    seen: list[SourceItem] = []

    def consume(items: Iterator[SourceItem]) -> None:
        for item in items:
            seen.append(item)
            stop.set()

    target.write_bytes(whole[: len(whole) // 2])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "read_bytes", read_while_writing)
        worker = threading.Thread(target=consume, args=(iter(source),))
        worker.start()
        worker.join(timeout=15)
    stop.set()
    assert not worker.is_alive()
    (item,) = seen
    assert isinstance(item, RawImage) and item.pixels == whole
    assert source.stats.snapshot()["changed_while_read"] == 1

"""ZTF alert packets from files: a directory of ``*.avro``, one file, or a glob; optionally watched.

Order: files sorted by path, alerts in container order; in watch mode each later scan's new
files follow, sorted. Each file is read once per iteration. Files present when iteration starts
are taken as complete; a file that appears later is read once its size and mtime have stayed
the same over one poll interval (writers should still prefer write-then-rename): the
folder-watch loop is :class:`~processors.ingest.sources.watch.FolderWatch`. A path that
:func:`~processors.ingest.sources.watch.refusal` refuses (a symlink leaving the folder, a
dangling one, a device or FIFO, a file over ``MAX_PACKET_FILE_BYTES``) is a packet failure with
the reason, never read.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Generator, Iterator
from pathlib import Path

from processors.ingest.sources.base import BaseSource, Capabilities
from processors.ingest.sources.items import SourceItem
from processors.ingest.sources.watch import (
    FolderWatch,
    glob_root,
    is_glob,
    refusal,
    watched_pattern,
)
from processors.ingest.ztf.alert_items import AlertItems, QualityCuts, ZtfStats
from processors.ingest.ztf.cutouts import CutoutMode

__all__ = ["ZtfFileSource"]

log = logging.getLogger(__name__)

MAX_PACKET_FILE_BYTES = 1 << 30
"""Packet files larger than this are refused unread (a night's alerts come in files of MBs)."""


class ZtfFileSource(BaseSource):
    """An image source over ZTF packet files.

    Yields one RawImage per alert that passes ``quality`` (see :class:`AlertItems` for what is
    cut, failed and counted in ``stats``). With ``watch=True`` the stream is endless: it stops
    when ``stop`` is set (checked between files and while waiting) or when the caller stops
    iterating.
    """

    capabilities = Capabilities(positions=True, watches_folder=True)

    def __init__(
        self,
        path_or_glob: str | os.PathLike[str],
        *,
        cutout: CutoutMode = "difference",
        watch: bool = False,
        poll_interval_s: float = 1.0,
        quality: QualityCuts | None = None,
        name: str = "ztf",
        stop: threading.Event | None = None,
    ) -> None:
        pattern = watched_pattern(
            path_or_glob,
            watch=watch,
            poll_interval_s=poll_interval_s,
            empty="path: an empty path; give a directory, an .avro file or a glob",
            missing="path={pattern!r} does not exist; give a directory, file or glob",
        )
        self.name = name
        self.pattern = pattern
        self.watch = watch
        self.poll_interval_s = float(poll_interval_s)
        self.stop = stop
        self.stats: ZtfStats = ZtfStats()
        self._items = AlertItems(name, cutout, quality or QualityCuts(), self.stats)
        if is_glob(pattern):
            self._root = glob_root(pattern)
        else:
            self._root = Path(pattern) if os.path.isdir(pattern) else Path(pattern).parent
        self._watch = FolderWatch(
            pattern,
            in_folder=lambda folder: folder.glob("*.avro"),
            skip=lambda path: path.name.startswith("."),
            watch=watch,
            poll_interval_s=self.poll_interval_s,
            stop=stop,
        )

    @property
    def endless(self) -> bool:
        """A watched folder never ends; otherwise iteration ends after the files present."""
        return self.watch

    def __repr__(self) -> str:
        return f"ZtfFileSource({self.pattern!r}, cutout={self._items.cutout!r}, name={self.name!r})"

    def __iter__(self) -> Generator[SourceItem, None, None]:
        def nothing() -> None:
            log.warning("ztf source %r: no .avro packets match %r", self.name, self.pattern)

        try:
            for path in self._watch.files(on_nothing=nothing):
                yield from self._read(path)
        finally:
            self._items.log_summary()

    def _read(self, path: Path) -> Iterator[SourceItem]:
        key = str(path)
        refused = refusal(path, self._root, MAX_PACKET_FILE_BYTES)
        if refused is not None:
            yield self._items.packet_failure(key, b"", *refused)
            return
        try:
            data = path.read_bytes()
        except OSError as exc:
            message = f"{type(exc).__name__}: {exc}"
            yield self._items.packet_failure(key, b"", "UnreadableFile", message)
            return
        yield from self._items.from_packet(key, data, {"packet": path.name})

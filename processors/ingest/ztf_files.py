"""ZTF alert packets from files: a directory of ``*.avro``, one file, or a glob; optionally watched.

Order: files sorted by path, alerts in container order; in watch mode each later scan's new
files follow, sorted. Each file is read once per iteration. Files present when iteration starts
are taken as complete; a file that appears later is read once its size and mtime have stayed
the same over one poll interval (writers should still prefer write-then-rename).
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path

from processors.core.exceptions import ConfigError
from processors.ingest.base import SourceItem
from processors.ingest.ztf_cutouts import CutoutMode
from processors.ingest.ztf_stream import AlertItems, QualityCuts, ZtfStats

__all__ = ["ZtfFileSource"]

log = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")


class ZtfFileSource:
    """An :class:`~processors.ingest.base.ImageSource` over ZTF packet files.

    Yields one RawImage per alert that passes ``quality`` (see :class:`AlertItems` for what is
    cut, failed and counted in ``stats``). With ``watch=True`` the stream is endless: it stops
    when ``stop`` is set (checked between files and while waiting) or when the caller stops
    iterating.
    """

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
        pattern = os.path.expanduser(os.fspath(path_or_glob))
        if not pattern:
            raise ConfigError("path: an empty path; give a directory, an .avro file or a glob")
        if not _GLOB_CHARS & set(pattern) and not os.path.exists(pattern) and not watch:
            raise ConfigError(f"path={pattern!r} does not exist; give a directory, file or glob")
        if not poll_interval_s > 0:
            raise ConfigError(f"poll_interval_s={poll_interval_s!r}: accepted values are > 0")
        self.name = name
        self.pattern = pattern
        self.watch = watch
        self.poll_interval_s = float(poll_interval_s)
        self.stop = stop
        self.stats = ZtfStats()
        self._items = AlertItems(name, cutout, quality or QualityCuts(), self.stats)

    @property
    def endless(self) -> bool:
        """A watched folder never ends; otherwise iteration ends after the files present."""
        return self.watch

    def __repr__(self) -> str:
        return f"ZtfFileSource({self.pattern!r}, cutout={self._items.cutout!r}, name={self.name!r})"

    def _scan(self) -> list[Path]:
        found: Iterator[Path]
        if os.path.isdir(self.pattern):
            found = Path(self.pattern).glob("*.avro")
        elif _GLOB_CHARS & set(self.pattern):
            found = (Path(p) for p in glob.glob(self.pattern))
        else:
            found = iter([Path(self.pattern)] if os.path.isfile(self.pattern) else [])
        return sorted(p for p in found if p.is_file() and not p.name.startswith("."))

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def __iter__(self) -> Generator[SourceItem, None, None]:
        done: set[Path] = set()
        pending: dict[Path, tuple[int, int]] = {}
        ready = self._scan()
        if not ready and not self.watch:
            log.warning("ztf source %r: no .avro packets match %r", self.name, self.pattern)
        try:
            while True:
                for path in ready:
                    if self._stopped():
                        return
                    done.add(path)
                    pending.pop(path, None)
                    yield from self._read(path)
                if not self.watch or self._stopped():
                    return
                if self.stop is not None:
                    self.stop.wait(self.poll_interval_s)
                else:
                    time.sleep(self.poll_interval_s)
                ready = self._settled(done, pending)
        finally:
            self._items.log_summary()

    def _settled(self, done: set[Path], pending: dict[Path, tuple[int, int]]) -> list[Path]:
        """New files whose (size, mtime) did not change since the previous scan."""
        ready = []
        for path in self._scan():
            if path in done:
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            signature = (st.st_size, st.st_mtime_ns)
            if pending.get(path) == signature:
                ready.append(path)
            else:
                pending[path] = signature
        return ready

    def _read(self, path: Path) -> Iterator[SourceItem]:
        key = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            message = f"{type(exc).__name__}: {exc}"
            yield self._items.packet_failure(key, b"", "UnreadableFile", message)
            return
        yield from self._items.from_packet(key, data, {"packet": path.name})

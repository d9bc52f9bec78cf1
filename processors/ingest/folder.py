"""Image files from a local folder or glob (``dir:PATH_OR_GLOB``), optionally watched.

Order: files sorted by path (the folder is walked recursively; a glob matches what it says);
in watch mode each later scan's new files follow, sorted. A file that appears after iteration
started is read once its size and mtime stayed the same over one poll interval (writers should
still prefer write-then-rename). Each file is read once per iteration.

Each file becomes exactly one item: a :class:`RawImage` whose ``provenance['path']`` is the
file's path relative to the folder given (for a glob, to the folder above its first wildcard),
or a :class:`SourceFailure` keyed by that same path, carrying the file's bytes (the first
``MAX_PIXEL_BYTES`` of them) and the reason. Counters: ``files`` (taken), ``yielded`` (images
yielded), ``failed`` and ``failed.<error_class>``, so ``files == yielded + failed``.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from processors.core.exceptions import BadImageError, ConfigError
from processors.core.imaging import MAX_PIXEL_BYTES
from processors.ingest.base import RawImage, SourceFailure, SourceItem
from processors.ingest.counters import SourceCounters
from processors.ingest.image_files import FILE_SUFFIXES, read_image_bytes

__all__ = ["FolderSource"]

log = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")


def _glob_root(pattern: str) -> Path:
    """The folder above a glob's first wildcard: ``a/b/*/c*.fits`` -> ``a/b``."""
    fixed: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


class FolderSource:
    """An :class:`~processors.ingest.base.ImageSource` over FITS, PNG, JPEG and TIFF files.

    With ``watch=True`` the stream is endless: it stops when ``stop`` is set (checked between
    files and while waiting) or when the caller stops iterating.
    """

    def __init__(
        self,
        path_or_glob: str | os.PathLike[str],
        *,
        watch: bool = False,
        poll_interval_s: float = 1.0,
        name: str = "dir",
        survey: str = "local",
        stop: threading.Event | None = None,
    ) -> None:
        pattern = os.path.expanduser(os.fspath(path_or_glob))
        if not pattern:
            raise ConfigError("path: empty; give dir:FOLDER, dir:FILE or dir:GLOB")
        is_glob = bool(_GLOB_CHARS & set(pattern))
        if not is_glob and not os.path.exists(pattern) and not watch:
            raise ConfigError(f"path={pattern!r} does not exist; give a folder, file or glob")
        if not poll_interval_s > 0:
            raise ConfigError(f"poll_interval_s={poll_interval_s!r}: accepted values are > 0")
        self.name = name
        self.survey = survey
        self.pattern = pattern
        self.watch = watch
        self.poll_interval_s = float(poll_interval_s)
        self.stop = stop
        if is_glob:
            self.root = _glob_root(pattern)
        elif os.path.isfile(pattern):
            self.root = Path(pattern).parent
        else:
            self.root = Path(pattern)
        self.stats = SourceCounters("files", "yielded", "failed")

    @property
    def endless(self) -> bool:
        """A watched folder never ends; otherwise iteration ends after the files present."""
        return self.watch

    def __repr__(self) -> str:
        return f"FolderSource({self.pattern!r}, watch={self.watch}, name={self.name!r})"

    def _scan(self) -> list[Path]:
        if os.path.isdir(self.pattern):
            found: Iterator[Path] = (
                p for p in Path(self.pattern).rglob("*") if p.name.lower().endswith(FILE_SUFFIXES)
            )
        elif _GLOB_CHARS & set(self.pattern):
            found = (Path(p) for p in glob.glob(self.pattern, recursive=True))
        else:
            found = iter([Path(self.pattern)] if os.path.isfile(self.pattern) else [])
        return sorted(p for p in found if p.is_file() and not self._hidden(p))

    def _hidden(self, path: Path) -> bool:
        """Dot files and files in dot folders under the root are skipped (editors, partial
        downloads, ``.DS_Store``)."""
        return any(part.startswith(".") for part in Path(self._relative(path)).parts)

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def __iter__(self) -> Iterator[SourceItem]:
        done: set[Path] = set()
        pending: dict[Path, tuple[int, int]] = {}
        ready = self._scan()
        if not ready and not self.watch:
            log.warning("dir source %r: no image files match %r", self.name, self.pattern)
        while True:
            for path in ready:
                if self._stopped():
                    return
                done.add(path)
                pending.pop(path, None)
                yield self._read(path)
            if not self.watch or self._stopped():
                return
            if self.stop is not None:
                self.stop.wait(self.poll_interval_s)
            else:
                time.sleep(self.poll_interval_s)
            ready = self._settled(done, pending)

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

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def _read(self, path: Path) -> SourceItem:
        self.stats.add("files")
        key = self._relative(path)
        data = b""
        try:
            data = path.read_bytes()
            decoded = read_image_bytes(data)
        except OSError as exc:
            return self._failure(key, data, "UnreadableFile", f"{type(exc).__name__}: {exc}")
        except BadImageError as exc:
            return self._failure(key, data, "BadImageFile", str(exc))
        mtime = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        self.stats.add("yielded")
        return RawImage(
            source=self.name,
            survey=self.survey,
            format=decoded.format,
            pixels=decoded.pixels,
            width=decoded.width,
            height=decoded.height,
            bands=decoded.bands,
            observed_at=decoded.observed_at or mtime,
            ra=decoded.ra,
            dec=decoded.dec,
            provenance={**decoded.provenance, "path": key},
        )

    def _failure(self, key: str, data: bytes, error_class: str, message: str) -> SourceFailure:
        self.stats.add_detail("failed", error_class)
        log.warning("dir source %r: %s: %s: %s", self.name, key, error_class, message)
        return SourceFailure(self.name, key, data[:MAX_PIXEL_BYTES], error_class, message)

"""Image files from a local folder or glob (``dir:PATH_OR_GLOB``), optionally watched.

Order: files sorted by path (the folder is walked recursively; a glob matches what it says);
in watch mode each later scan's new files follow, sorted. A file that appears after iteration
started is read once its size and mtime stayed the same over one poll interval (writers should
still prefer write-then-rename). Each file is read once per iteration.

Each file becomes exactly one item: a :class:`RawImage` whose ``provenance['path']`` is the
file's path relative to the folder given (for a glob, to the folder above its first wildcard),
or a :class:`SourceFailure` keyed by that same path, carrying the file's bytes (the first
``MAX_PIXEL_BYTES`` of them) and the reason. Counters: ``files`` (taken), ``yielded`` (images
yielded), ``failed`` and ``failed.<error_class>``, so ``files == yielded + failed -
failed.UnreadableFolder`` (a folder that cannot be listed is a failure, not a file).

Hostile folders (:mod:`processors.ingest.sources.watch`): a symlink leaving the folder is a
failure ``SymlinkOutsideFolder`` and is not read; a dangling or looping link, a device or FIFO,
and a file that cannot be read (permission denied) are ``UnreadableFile``; a folder that cannot
be listed is one ``UnreadableFolder`` failure per iteration, keyed by its path; a file over four
times ``MAX_PIXEL_BYTES`` (more than any image record may hold) is ``OversizedFile``, never read
whole. Symlinked folders are not descended (a glob that would descend one skips what lies
under it), so a loop neither hangs nor repeats. In watch mode a file whose size or mtime
changed while it was read is read again once it has settled (counter ``changed_while_read``).

Spec: ``dir:PATH_OR_GLOB[?watch=BOOL&poll_interval_s=SECONDS&name=TEXT&survey=TEXT]``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from processors.core.exceptions import BadImageError, ConfigError, ImageTooLargeError
from processors.core.imaging import MAX_PIXEL_BYTES
from processors.ingest.counters import SourceCounters
from processors.ingest.files.decode import FILE_SUFFIXES, read_image_bytes
from processors.ingest.sources.base import BaseSource, Capabilities
from processors.ingest.sources.items import RawImage, SourceFailure, SourceItem
from processors.ingest.sources.options import flag, positive, split_options, text, typed_options
from processors.ingest.sources.watch import (
    FolderWatch,
    glob_root,
    is_glob,
    refusal,
    through_symlinked_folder,
    walk_files,
    watched_pattern,
)

__all__ = ["FolderSource", "folder_source_from_spec"]

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 4 * MAX_PIXEL_BYTES
"""Files larger than this are refused unread: no image record may hold more pixels."""


def _signature(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


OPTIONS = {"watch": flag, "poll_interval_s": positive, "name": text, "survey": text}


def folder_source_from_spec(spec: str, *, stop: threading.Event | None = None) -> FolderSource:
    """The source of ``dir:PATH_OR_GLOB[?OPTIONS]``; ConfigError names a bad key or value."""
    target, options = split_options(spec[len("dir:") :])
    if not target:
        raise ConfigError("source dir: path empty; give dir:FOLDER, dir:FILE or dir:GLOB")
    return FolderSource(target, stop=stop, **typed_options("dir", options, OPTIONS))


class FolderSource(BaseSource):
    """An image source over FITS, PNG, JPEG and TIFF files.

    With ``watch=True`` the stream is endless: it stops when ``stop`` is set (checked between
    files and while waiting) or when the caller stops iterating.
    """

    capabilities = Capabilities(positions=True, watches_folder=True)
    skip_keys: frozenset[str] = frozenset()
    """Relative paths not read at all (a resumed run stored them: processors.ingest.skip)."""

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
        pattern = watched_pattern(
            path_or_glob,
            watch=watch,
            poll_interval_s=poll_interval_s,
            empty="path: empty; give dir:FOLDER, dir:FILE or dir:GLOB",
            missing="path={pattern!r} does not exist; give a folder, file or glob",
        )
        self.name = name
        self.survey = survey
        self.pattern = pattern
        self.watch = watch
        self.poll_interval_s = float(poll_interval_s)
        self.stop = stop
        if is_glob(pattern):
            self.root = glob_root(pattern)
        elif os.path.isfile(pattern):
            self.root = Path(pattern).parent
        else:
            self.root = Path(pattern)
        self.stats: SourceCounters = SourceCounters("files", "yielded", "failed")
        self._unlisted: dict[Path, str] = {}
        self._watch = FolderWatch(
            pattern,
            in_folder=lambda folder: walk_files(
                folder, lambda name: name.lower().endswith(FILE_SUFFIXES), self._on_unlisted
            ),
            skip=lambda path: self._hidden(path) or through_symlinked_folder(path, self.root),
            recursive=True,
            watch=watch,
            poll_interval_s=self.poll_interval_s,
            stop=stop,
        )

    @property
    def endless(self) -> bool:
        """A watched folder never ends; otherwise iteration ends after the files present."""
        return self.watch

    def __repr__(self) -> str:
        return f"FolderSource({self.pattern!r}, watch={self.watch}, name={self.name!r})"

    def _hidden(self, path: Path) -> bool:
        """Dot files and files in dot folders under the root are skipped (editors, partial
        downloads, ``.DS_Store``)."""
        return any(part.startswith(".") for part in Path(self._relative(path)).parts)

    def _on_unlisted(self, folder: Path, exc: OSError) -> None:
        self._unlisted.setdefault(folder, f"{type(exc).__name__}: {exc}")

    def _unlisted_failures(self, reported: set[Path]) -> Iterator[SourceItem]:
        for folder, message in sorted(self._unlisted.items()):
            if folder not in reported:
                reported.add(folder)
                yield self._failure(self._relative(folder), b"", "UnreadableFolder", message)

    def __iter__(self) -> Iterator[SourceItem]:
        def nothing() -> None:
            log.warning("dir source %r: no image files match %r", self.name, self.pattern)

        reported: set[Path] = set()
        self._unlisted.clear()
        for path in self._watch.files(on_nothing=nothing):
            yield from self._unlisted_failures(reported)
            if self.skip_keys and self._relative(path) in self.skip_keys:
                self.stats.add("skipped_stored")
                continue
            item = self._read(path)
            if item is not None:
                yield item
        yield from self._unlisted_failures(reported)

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def _read(self, path: Path) -> SourceItem | None:
        """The file's item; None when it changed while read and will be read again."""
        key = self._relative(path)
        refused = refusal(path, self.root, MAX_FILE_BYTES)
        if refused is not None:
            self.stats.add("files")
            data = b""
            if refused[0] == "OversizedFile":
                with contextlib.suppress(OSError), path.open("rb") as head:
                    data = head.read(MAX_PIXEL_BYTES)
            return self._failure(key, data, *refused)
        data = b""
        try:
            before = path.stat()
            data = path.read_bytes()
            after = path.stat()
        except OSError as exc:
            self.stats.add("files")
            return self._failure(key, data, "UnreadableFile", f"{type(exc).__name__}: {exc}")
        if _signature(before) != _signature(after) and self._watch.again(path):
            self.stats.add("changed_while_read")
            return None
        self.stats.add("files")
        try:
            decoded = read_image_bytes(data)
        except ImageTooLargeError as exc:
            return self._failure(key, data, "ImageTooLarge", str(exc))
        except BadImageError as exc:
            return self._failure(key, data, "BadImageFile", str(exc))
        mtime = datetime.fromtimestamp(after.st_mtime, tz=UTC)
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
        """A failure item; counted in ``failed`` (and ``files``, by the caller for a file)."""
        self.stats.add_detail("failed", error_class)
        log.warning("dir source %r: %s: %s: %s", self.name, key, error_class, message)
        return SourceFailure(self.name, key, data[:MAX_PIXEL_BYTES], error_class, message)

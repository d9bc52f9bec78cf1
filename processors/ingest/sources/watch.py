"""The one folder-watch loop: files of a folder, file or glob, each once, optionally watched.

Shared by the sources that read local files (``dir:``, ``ztf:PATH``). Invariants of
:meth:`FolderWatch.files`:

- order: the files present when iteration starts, sorted by path; in watch mode each later
  scan's new files follow, sorted;
- each file is handed out at most once per iteration;
- files present at the start are taken as complete; a file that appears later is handed out
  once its size and mtime stayed the same over one poll interval (writers should still prefer
  write-then-rename);
- ``stop`` is checked before each file and ends the wait between scans at once; without
  ``watch`` the iteration ends after the files present at the start.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from processors.core.exceptions import ConfigError

__all__ = ["GLOB_CHARS", "FolderWatch", "glob_root", "is_glob", "watched_pattern"]

GLOB_CHARS = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` has a glob wildcard (``*``, ``?`` or ``[``)."""
    return bool(GLOB_CHARS & set(pattern))


def glob_root(pattern: str) -> Path:
    """The folder above a glob's first wildcard.

    >>> glob_root("a/b/*/c*.fits").as_posix()
    'a/b'
    """
    fixed: list[str] = []
    for part in Path(pattern).parts[:-1]:
        if is_glob(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def watched_pattern(
    path_or_glob: str | os.PathLike[str],
    *,
    watch: bool,
    poll_interval_s: float,
    empty: str,
    missing: str,
) -> str:
    """The pattern, ``~`` expanded, checked: raises ConfigError ``empty`` for an empty one,
    ``missing`` (formatted with ``pattern``) for a path that does not exist (unless it is a glob
    or watched: it may appear later), and for a ``poll_interval_s`` that is not > 0."""
    pattern = os.path.expanduser(os.fspath(path_or_glob))
    if not pattern:
        raise ConfigError(empty)
    if not is_glob(pattern) and not os.path.exists(pattern) and not watch:
        raise ConfigError(missing.format(pattern=pattern))
    if not poll_interval_s > 0:
        raise ConfigError(f"poll_interval_s={poll_interval_s!r}: accepted values are > 0")
    return pattern


@dataclass
class FolderWatch:
    """The files ``pattern`` names, found by ``scan``; see the module docstring.

    ``in_folder(folder)`` lists a folder's candidate files; ``recursive`` lets a glob's ``**``
    span folders; ``skip(path)`` drops a file (e.g. a hidden one).
    """

    pattern: str
    in_folder: Callable[[Path], Iterable[Path]]
    skip: Callable[[Path], bool]
    recursive: bool = False
    watch: bool = False
    poll_interval_s: float = 1.0
    stop: threading.Event | None = None

    def scan(self) -> list[Path]:
        """The files matching now, sorted by path."""
        found: Iterable[Path]
        if os.path.isdir(self.pattern):
            found = self.in_folder(Path(self.pattern))
        elif is_glob(self.pattern):
            found = (Path(p) for p in glob.glob(self.pattern, recursive=self.recursive))
        else:
            found = [Path(self.pattern)] if os.path.isfile(self.pattern) else []
        return sorted(p for p in found if p.is_file() and not self.skip(p))

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def files(self, on_nothing: Callable[[], None] | None = None) -> Iterator[Path]:
        """Each file once, in order; ``on_nothing()`` is called when an unwatched pattern
        matches no file at the start."""
        done: set[Path] = set()
        pending: dict[Path, tuple[int, int]] = {}
        ready = self.scan()
        if not ready and not self.watch and on_nothing is not None:
            on_nothing()
        while True:
            for path in ready:
                if self.stopped():
                    return
                done.add(path)
                pending.pop(path, None)
                yield path
            if not self.watch or self.stopped():
                return
            if self.stop is not None:
                self.stop.wait(self.poll_interval_s)
            else:
                time.sleep(self.poll_interval_s)
            ready = self._settled(done, pending)

    def _settled(self, done: set[Path], pending: dict[Path, tuple[int, int]]) -> list[Path]:
        """New files whose (size, mtime) did not change since the previous scan."""
        ready = []
        for path in self.scan():
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

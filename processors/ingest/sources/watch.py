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
  ``watch`` the iteration ends after the files present at the start;
- a file the reader found changing while it read it is handed back (:meth:`FolderWatch.again`)
  and handed out again once it has settled, in watch mode.

Hostile folders (ARCHITECTURE.md, "Guarantees"): :func:`walk_files` never descends a symlinked
folder (a loop can neither hang nor repeat files) and reports a folder it cannot list instead of
skipping it silently; :func:`refusal` tells the reader, before it opens a file, why a path must
not be read: a symlink that leaves the watched folder, one that cannot be resolved (dangling, a
loop), anything but a regular file, a file larger than the reader's bound. Everything but a
folder (dangling links, FIFOs, devices included) is handed out, so that the reader reports it.
"""

from __future__ import annotations

import glob
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from processors.core.exceptions import ConfigError

__all__ = [
    "GLOB_CHARS",
    "FolderWatch",
    "glob_root",
    "is_glob",
    "refusal",
    "through_symlinked_folder",
    "walk_files",
    "watched_pattern",
]

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


def walk_files(
    folder: Path, accept: Callable[[str], bool], unlisted: Callable[[Path, OSError], None]
) -> Iterator[Path]:
    """Entries under ``folder`` (recursively) that are not folders and whose name ``accept``s.

    Symlinked folders are not descended (their files are read through the real folder when it
    is under the watched one; a link leaving it is :func:`refusal`'s case for files); a folder
    that cannot be listed is passed to ``unlisted`` with the error, and the walk goes on."""
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as listing:
                entries = list(listing)
        except OSError as exc:
            unlisted(current, exc)
            continue
        for entry in entries:
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_folder = False
            if is_folder:
                stack.append(Path(entry.path))
            elif accept(entry.name):
                yield Path(entry.path)


def through_symlinked_folder(path: Path, root: Path) -> bool:
    """Whether a folder between ``root`` and ``path`` is a symlink (a glob's ``**`` follows
    them, so a loop would hand out the same files again, one level deeper each time)."""
    try:
        parts = path.parent.relative_to(root).parts
    except ValueError:
        return False
    folder = root
    for part in parts:
        folder = folder / part
        if folder.is_symlink():
            return True
    return False


def refusal(path: Path, root: Path, max_bytes: int) -> tuple[str, str] | None:
    """``(error_class, reason)`` when ``path`` must not be read, else None.

    ``SymlinkOutsideFolder``: it resolves outside ``root`` (resolved too); ``UnreadableFile``: it
    cannot be resolved (a dangling link, a loop) or is not a regular file (a device, a FIFO,
    which would block the read); ``OversizedFile``: over ``max_bytes``, never read whole."""
    try:
        real = path.resolve(strict=True)
        base = root.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on some versions
        return "UnreadableFile", f"cannot be resolved ({type(exc).__name__}: {exc})"
    if real != base and base not in real.parents:
        return "SymlinkOutsideFolder", f"a symlink that leaves the watched folder {base}, to {real}"
    try:
        st = real.stat()
    except OSError as exc:
        return "UnreadableFile", f"{type(exc).__name__}: {exc}"
    if not stat.S_ISREG(st.st_mode):
        return "UnreadableFile", "not a regular file (a device, FIFO or folder): not read"
    if st.st_size > max_bytes:
        return "OversizedFile", f"{st.st_size} bytes; files over {max_bytes} bytes are not read"
    return None


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
    _done: set[Path] = field(default_factory=set, init=False, repr=False)

    def scan(self) -> list[Path]:
        """The files matching now, sorted by path."""
        found: Iterable[Path]
        if os.path.isdir(self.pattern):
            found = self.in_folder(Path(self.pattern))
        elif is_glob(self.pattern):
            found = (Path(p) for p in glob.glob(self.pattern, recursive=self.recursive))
        else:
            found = [Path(self.pattern)] if os.path.isfile(self.pattern) else []
        # not folders (a link to one included); dangling links, FIFOs, devices: the reader's
        return sorted(
            p for p in found if os.path.lexists(p) and not p.is_dir() and not self.skip(p)
        )

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def again(self, path: Path) -> bool:
        """Hand ``path`` out again once it has settled (its reader saw it change while it read
        it); only in watch mode, returns whether it will be. Without watch, it is read once."""
        if not self.watch:
            return False
        self._done.discard(path)
        return True

    def files(self, on_nothing: Callable[[], None] | None = None) -> Iterator[Path]:
        """Each file once, in order; ``on_nothing()`` is called when an unwatched pattern
        matches no file at the start."""
        done: set[Path] = set()
        self._done = done
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
                try:  # a dangling link settles too, so that its reader reports it
                    st = path.lstat()
                except OSError:
                    continue
            signature = (st.st_size, st.st_mtime_ns)
            if pending.get(path) == signature:
                ready.append(path)
            else:
                pending[path] = signature
        return ready

"""The durable broker's storage: ``localbucket`` with compare-and-set writes.

Tansu's S3 engine keeps every partition's watermark and the cluster's topic list (``meta.json``)
as objects it updates by compare-and-set: read the object and its ETag, change it, write it back
with ``If-Match: <etag>``, and on ``412 Precondition Failed`` read again and retry. That is the
only thing that orders two brokers' threads writing the same object. ``localbucket`` honours
``If-None-Match: *`` (create once) but ignores ``If-Match`` on a plain PUT, so two concurrent
updates both "win" and one is lost: four admin clients creating 40 topics at once left 22 in
``meta.json``, and a topic missing there is created again on the next start, which resets its
watermark to 0 and fails every later produce to it with an unknown server error (the batch
object at that offset already exists).

A compare-and-set also needs reads that pair a body with its own ETag. ``localbucket`` opens the
file, then computes the ETag from the path: a write landing in between pairs the old body with
the new ETag, and the next compare-and-set from that copy succeeds and drops the update in
between (one topic in about 200 concurrent creations, with ``If-Match`` honoured).

And ``localbucket`` lists a prefix by walking the whole bucket, while Tansu lists a partition's
``records/`` folder on every fetch of it: every consumer's poll cost a walk of every batch of
every topic. A durable run's bucket server was busy a whole core, and scoring fell from 13 to
1-2 images/s within two minutes as the folder grew.

This module serves the same folder with ``localbucket``'s handler, with three changes:

- a PUT that carries ``If-Match`` writes only while the object's current ETag is one it lists,
  and otherwise answers 412;
- every write, read (GET, HEAD) and delete of an object holds a lock for its path (striped), so
  no write slips between another's check and its rename, or between a read's open and its ETag;
- a listing walks only the folder its prefix names (the prefix up to its last ``/``), with the
  same answer: every key with the prefix lies in that folder.

Invariants: one process serves a folder (the broker's); the ETag compared is the MD5 of the
current file, as ``localbucket`` reports it; an ``If-Match`` on a missing object fails (412).
"""

from __future__ import annotations

import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import localbucket

__all__ = ["CompareAndSetHandler", "main"]

_STRIPES = 64
_LOCKS = [threading.Lock() for _ in range(_STRIPES)]


def _lock_for(path: str) -> threading.Lock:
    return _LOCKS[zlib.crc32(path.encode()) % _STRIPES]


class CompareAndSetHandler(localbucket.S3Handler):
    """``localbucket``'s S3 handler whose object writes honour ``If-Match``."""

    def _write_object(self, bucket: str, key: str, write: Callable[[IO[bytes]], str]) -> str:
        target = self._object_path(bucket, key)
        if_match = self.headers.get("If-Match")
        with _lock_for(str(target)):
            if if_match is not None:
                current = localbucket.object_etag(target) if target.is_file() else None
                if current is None or not localbucket.etag_matches(if_match, current):
                    raise self._precondition_failed_error()
            etag: str = super()._write_object(bucket, key, write)
            return etag

    def _get(self, bucket: str, key: str, include_body: bool) -> None:
        with _lock_for(str(self._object_path(bucket, key))):
            super()._get(bucket, key, include_body)

    def _delete_object(self, bucket: str, key: str) -> None:
        with _lock_for(str(self._object_path(bucket, key))):
            super()._delete_object(bucket, key)

    def _list_entries(
        self,
        bucket_dir: Path,
        prefix: str,
        delimiter: str,
        marker: str,
        marker_is_prefix: bool,
        max_keys: int,
    ) -> tuple[list[tuple[str, Path]], list[str], bool, str]:
        """``localbucket``'s page of keys after ``marker``, listed from the prefix's folder."""
        folder = prefix[: prefix.rfind("/") + 1]  # "" when the prefix names no folder
        parts = folder.split("/")[:-1]
        if not folder or any(part in ("", ".", "..") for part in parts):
            listed: tuple[list[tuple[str, Path]], list[str], bool, str] = super()._list_entries(
                bucket_dir, prefix, delimiter, marker, marker_is_prefix, max_keys
            )
            return listed
        if marker and marker_is_prefix and folder.startswith(marker):  # the folder was listed
            return [], [], False, ""
        if marker and not marker.startswith(folder):
            if marker.encode() > folder.encode():  # past every key in the folder
                return [], [], False, ""
            marker, marker_is_prefix = "", False  # before every key in the folder
        contents, common, truncated, last = super()._list_entries(
            bucket_dir / folder,
            prefix[len(folder) :],
            delimiter,
            marker[len(folder) :],
            marker_is_prefix,
            max_keys,
        )
        last = f"{last[:2]}{folder}{last[2:]}" if last else last
        return (
            [(folder + key, path) for key, path in contents],
            [folder + prefix_ for prefix_ in common],
            truncated,
            last,
        )


_EXTENDED = ("_write_object", "_get", "_delete_object", "_object_path", "_list_entries")
"""The handler methods this module wraps: internals of ``localbucket`` 1.2 (pinned <1.3)."""


def main(argv: list[str] | None = None) -> Any:
    """``python -m processors.core.cas_bucket --port P FOLDER``: ``localbucket``'s command line,
    served with :class:`CompareAndSetHandler`."""
    missing = [name for name in _EXTENDED if not hasattr(localbucket.S3Handler, name)]
    if missing:
        names = ", ".join(missing)
        sys.exit(f"cas_bucket: this localbucket has no {names}; install localbucket<1.3")
    localbucket.S3Handler = CompareAndSetHandler  # main() builds its server from this name
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    return localbucket.main()


if __name__ == "__main__":
    main()

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

And ``localbucket`` lists every object's ``LastModified`` to the second, while Tansu answers
"latest offset" (the high watermark a consumer or ``get_watermark_offsets`` asks for) with the
batch object listed as modified last, the first of a tie: three control events produced within
a second gave a log end of 1, not 3, and a scorer that waited for "every event in the log"
scored past the last two.

And ``localbucket`` has no DeleteObjects (``POST /bucket?delete``), the only way Tansu deletes a
topic's objects: it answered 501, the broker retried ten times and then dropped the admin
client's connection, so a durable broker could not delete a topic at all.

This module serves the same folder with ``localbucket``'s handler, with five changes:

- a PUT that carries ``If-Match`` writes only while the object's current ETag is one it lists,
  and otherwise answers 412;
- every write, read (GET, HEAD) and delete of an object holds a lock for its path (striped), so
  no write slips between another's check and its rename, or between a read's open and its ETag;
- a listing walks only the folder its prefix names (the prefix up to its last ``/``), with the
  same answer: every key with the prefix lies in that folder;
- DeleteObjects deletes every key it lists as DeleteObject does (a missing key counts as
  deleted, as on S3), each under its path's lock, and answers per key;
- a listing's ``LastModified`` is the file's modification time to the nanosecond, and of two
  keys listed with the same time (a file system whose clock ticks coarser), the later key is
  a nanosecond later: a partition's batches, named by offset, then list in the order written.

Invariants: one process serves a folder (the broker's); the ETag compared is the MD5 of the
current file, as ``localbucket`` reports it; an ``If-Match`` on a missing object fails (412).
"""

from __future__ import annotations

import sys
import threading
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any

import localbucket

__all__ = ["CompareAndSetHandler", "main"]

_STRIPES = 64
_MAX_DELETE_KEYS = 1000  # S3's bound on one DeleteObjects request
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

    def _post_request(self, bucket: str, key: str) -> None:
        if bucket and not key and "delete" in self.query:
            self._check_query("DeleteObjects", {"delete"})
            self._delete_objects(bucket, self._read_body())
        else:
            super()._post_request(bucket, key)

    def _delete_objects(self, bucket: str, body: bytes) -> None:
        """DeleteObjects: every ``<Object><Key>`` of the request deleted (folders left empty
        removed, as DeleteObject does); the answer names each key ``Deleted`` (not in quiet
        mode) or an ``Error`` with its code. A body that is not such a document is refused
        whole (400 MalformedXML) and deletes nothing."""
        keys, quiet = _delete_request_keys(body)
        bucket_dir = self._bucket_dir(bucket).resolve()  # NoSuchBucket, before any delete
        result = ET.Element("DeleteResult", xmlns=localbucket.S3_NAMESPACE)
        for key in keys:
            try:
                target = self._object_path(bucket, key)
                with _lock_for(str(target)):
                    _remove_file(target, bucket_dir)
            except localbucket.S3Error as error:
                failed = ET.SubElement(result, "Error")
                for tag, text in (("Key", key), ("Code", error.code), ("Message", error.message)):
                    localbucket.sub_element(failed, tag, text)
                continue
            if not quiet:
                localbucket.sub_element(ET.SubElement(result, "Deleted"), "Key", key)
        self._send_xml(result)

    def _add_list_entries(
        self,
        root: ET.Element,
        contents: list[tuple[str, Path]],
        common_prefixes: list[str],
        encode: Callable[[str], str],
    ) -> None:
        """``localbucket``'s listing entries, with ``LastModified`` to the nanosecond."""
        super()._add_list_entries(root, contents, common_prefixes, encode)
        listed = root.findall("Contents")
        items = listed[len(listed) - len(contents) :]  # the entries just added, in order
        previous_mtime = previous_stamp = -1
        for item, (_key, path) in zip(items, contents, strict=True):
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:  # deleted since it was listed: keep the answer localbucket gave
                continue
            stamp = previous_stamp + 1 if mtime == previous_mtime else mtime
            previous_mtime, previous_stamp = mtime, stamp
            when = datetime.fromtimestamp(stamp // 10**9, UTC)
            modified = item.find("LastModified")
            if modified is not None:
                modified.text = f"{when:%Y-%m-%dT%H:%M:%S}.{stamp % 10**9:09d}Z"

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


def _delete_request_keys(body: bytes) -> tuple[list[str], bool]:
    """The keys of a DeleteObjects body and its ``Quiet`` flag (any XML namespace)."""
    malformed = localbucket.S3Error(
        HTTPStatus.BAD_REQUEST,
        "MalformedXML",
        "The XML you provided was not well-formed or did not validate against our schema.",
    )
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise malformed from exc

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    if local(root.tag) != "Delete":
        raise malformed
    keys, quiet = [], False
    for child in root:
        if local(child.tag) == "Quiet":
            quiet = (child.text or "").strip().lower() == "true"
        elif local(child.tag) == "Object":
            key = next((k.text for k in child if local(k.tag) == "Key"), None)
            if not key:
                raise malformed
            keys.append(key)
    if not keys or len(keys) > _MAX_DELETE_KEYS:
        raise malformed
    return keys, quiet


def _remove_file(target: Path, bucket_dir: Path) -> None:
    """Delete ``target`` if it is a file, then each folder above it left empty, up to the
    bucket's (what ``localbucket``'s DeleteObject does before it answers)."""
    if not target.is_file():
        return
    target.unlink(missing_ok=True)
    parent = target.parent
    while parent != bucket_dir:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


_EXTENDED = (
    "_write_object",
    "_get",
    "_delete_object",
    "_object_path",
    "_list_entries",
    "_add_list_entries",
    "_post_request",
    "_read_body",
    "_bucket_dir",
    "_check_query",
    "_send_xml",
)
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

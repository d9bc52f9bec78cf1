"""Content-addressed blob store: the artifact id of a blob is the sha256 of its bytes.

Control events name large objects (calibration references, model weights) by artifact id instead
of carrying them; every processor that reads the event fetches the same bytes from the store and
can check that they are the bytes the event meant.

Layout: ``<root>/<id[:2]>/<id>``; a blob file is only ever created by renaming a completed,
flushed temporary file in the same directory, so a reader sees either no file or the whole blob.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from processors.core.exceptions import SkyloopError

__all__ = ["ArtifactError", "ArtifactStore", "artifact_id_of"]

_ID = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(SkyloopError):
    """An artifact id is malformed, absent from the store, or its bytes fail their hash check."""


def artifact_id_of(data: bytes) -> str:
    """The artifact id of ``data``: the lowercase sha256 hex digest of the bytes."""
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """Immutable blobs under ``root``, addressed by the sha256 of their content.

    Invariants:
      - ``put_bytes(b)`` returns ``artifact_id_of(b)``; putting the same bytes again (from any
        process) is a no-op that returns the same id, and never rewrites an existing blob.
      - A blob appears atomically (temporary file, fsync, rename in the same directory).
      - ``get_bytes(i)`` returns bytes whose sha256 is ``i`` or raises :class:`ArtifactError`;
        corruption on disk is detected, never returned.

    Example:
        >>> import tempfile
        >>> store = ArtifactStore(Path(tempfile.mkdtemp()))
        >>> aid = store.put_bytes(b"reference")
        >>> aid == artifact_id_of(b"reference"), store.exists(aid), store.get_bytes(aid)
        (True, True, b'reference')
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ArtifactStore(root={str(self.root)!r})"

    @staticmethod
    def _check_id(artifact_id: str) -> str:
        if not isinstance(artifact_id, str) or not _ID.match(artifact_id):
            raise ArtifactError(
                f"artifact id {artifact_id!r} is not a sha256 digest (64 lowercase hex characters)"
            )
        return artifact_id

    def path_of(self, artifact_id: str) -> Path:
        """Where the blob with this id lives (whether or not it exists); validates the id."""
        self._check_id(artifact_id)
        return self.root / artifact_id[:2] / artifact_id

    def exists(self, artifact_id: str) -> bool:
        """True when a blob with this id is in the store (its content is checked on read)."""
        return self.path_of(artifact_id).is_file()

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` and return its artifact id; idempotent and atomic."""
        data = bytes(data)
        artifact_id = artifact_id_of(data)
        path = self.path_of(artifact_id)
        if path.is_file():
            return artifact_id
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{artifact_id[:12]}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return artifact_id

    def get_bytes(self, artifact_id: str) -> bytes:
        """The blob's bytes; raises :class:`ArtifactError` if absent or if its hash differs."""
        path = self.path_of(artifact_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(
                f"artifact {artifact_id} is not in the store at {self.root}"
            ) from None
        except OSError as exc:
            raise ArtifactError(f"artifact {artifact_id} could not be read: {exc}") from exc
        actual = artifact_id_of(data)
        if actual != artifact_id:
            raise ArtifactError(
                f"artifact {artifact_id} is corrupt: its bytes hash to {actual} ({path})"
            )
        return data

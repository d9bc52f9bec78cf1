"""An output stream whose writes never block the writer.

Why: the run's supervisor writes its progress to stderr from the loop that also heals dead
workers and rotates the memory broker's hot log. When stderr is a pipe that nobody reads (a
caller that collects it only at the end), the pipe fills after some tens of kilobytes and the
next ``write`` blocks: no healing, no rotation, ingest held for as long as nobody reads. With
:class:`UnblockedOut` the loop hands its text to a bounded buffer and goes on; one daemon thread
does the blocking writes.

Invariants: text reaches the wrapped stream in the order it was written. When the buffer holds
more than ``bound_chars``, the oldest writes are dropped whole (never split) and counted;
:meth:`close` writes how many, once the reader is back. Nothing here ever blocks the caller,
except :meth:`close`, which waits at most ``close_timeout_s`` for the buffer to drain.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from typing import TextIO

__all__ = ["UnblockedOut"]


class UnblockedOut(io.TextIOBase):
    """Wraps ``stream`` (a text stream): ``write`` buffers, a daemon thread writes and flushes."""

    def __init__(self, stream: TextIO, *, bound_chars: int = 1 << 20) -> None:
        super().__init__()
        self.stream = stream
        self.bound_chars = bound_chars
        self.dropped_writes = 0
        self._pending: deque[str] = deque()
        self._pending_chars = 0
        self._busy = False  # the thread holds a write it took off the buffer
        self._closed = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._drain, name="unblocked-out", daemon=True)
        self._thread.start()

    # -- the parts of TextIO that callers (print, rich's Console) use
    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        """Buffer ``text`` for the thread; returns at once."""
        if not text:
            return 0
        with self._ready:
            if self._closed:
                return 0
            self._pending.append(text)
            self._pending_chars += len(text)
            while self._pending_chars > self.bound_chars and len(self._pending) > 1:
                self._pending_chars -= len(self._pending.popleft())
                self.dropped_writes += 1
            self._ready.notify()
        return len(text)

    def flush(self) -> None:
        """Nothing to do here: the thread flushes after every write it makes."""

    def drained(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for everything written so far to reach the stream."""
        with self._ready:
            return self._ready.wait_for(
                lambda: not self._pending and not self._busy, timeout=timeout_s
            )

    def close(self, close_timeout_s: float = 2.0) -> None:
        """Stop taking writes; wait up to ``close_timeout_s`` for the rest to be written."""
        if self.closed:
            return
        with self._ready:
            if self.dropped_writes:  # past the bound: this note must not drop another write
                note = (
                    f"skyloop: {self.dropped_writes} progress writes were dropped: "
                    "the output was not read while the run went on\n"
                )
                self._pending.append(note)
                self._pending_chars += len(note)
                self._ready.notify()
        self.drained(close_timeout_s)
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        super().close()

    def _drain(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return  # closed and empty
                text = self._pending.popleft()
                self._pending_chars -= len(text)
                self._busy = True
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stream: the run goes on without its output
            finally:
                with self._ready:
                    self._busy = False
                    self._ready.notify_all()

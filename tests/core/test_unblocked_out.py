"""UnblockedOut: a writer never waits on a reader, text keeps its order, drops are counted."""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable, Iterator

import pytest

from processors.core.unblocked_out import UnblockedOut

LINE_COUNT = 4096  # 4 MiB of lines: far past any pipe's buffer (64 KiB on Linux)


def _lines(count: int = LINE_COUNT) -> Iterator[str]:
    for number in range(count):
        yield f"{number:08d} " + "x" * 1014 + "\n"


def _finishes(work: Callable[[], None], timeout_s: float) -> bool:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


@pytest.fixture
def unread_pipe() -> Iterator[tuple[io.TextIOWrapper, int]]:
    """A text stream on a pipe's write end, and the read end, which nobody reads yet."""
    read_fd, write_fd = os.pipe()
    stream = open(write_fd, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    yield stream, read_fd
    # the read end first: a writer still blocked on the pipe then fails instead of hanging
    for close in (lambda: os.close(read_fd), stream.close):
        with contextlib.suppress(OSError):
            close()


def test_text_reaches_the_stream_whole_and_in_order() -> None:
    target = io.StringIO()
    out = UnblockedOut(target)  # bound 1 MiB: these 512 KiB all fit, however slow the thread
    expected = "".join(_lines(512))
    for line in _lines(512):
        out.write(line)
    out.close(close_timeout_s=10)
    assert out.dropped_writes == 0
    assert target.getvalue() == expected


def test_a_plain_write_to_an_unread_pipe_blocks(
    unread_pipe: tuple[io.TextIOWrapper, int],
) -> None:
    """The fault UnblockedOut exists for: without it the writer hangs."""
    stream, _ = unread_pipe

    def write_all() -> None:
        with contextlib.suppress(BrokenPipeError):  # when the fixture closes the read end
            for line in _lines():
                stream.write(line)
                stream.flush()

    assert not _finishes(write_all, timeout_s=2)


def test_writes_to_an_unread_pipe_return_and_the_drops_are_told(
    unread_pipe: tuple[io.TextIOWrapper, int],
) -> None:
    stream, read_fd = unread_pipe
    out = UnblockedOut(stream, bound_chars=64 * 1024)

    def write_all() -> None:
        for line in _lines():
            out.write(line)

    assert _finishes(write_all, timeout_s=30)
    assert out.dropped_writes > 0

    # the reader comes back: what arrives is in order, and ends with how much was dropped
    received = bytearray()
    reader = threading.Thread(target=lambda: _read_until_closed(read_fd, received), daemon=True)
    reader.start()
    out.close(close_timeout_s=10)
    stream.close()
    reader.join(10)
    text = received.decode()
    numbers = [int(line[:8]) for line in text.splitlines() if line[:8].isdigit()]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert numbers[-1] == LINE_COUNT - 1  # the newest writes are kept, the oldest dropped
    assert len(numbers) + out.dropped_writes == LINE_COUNT
    assert text.endswith(
        f"{out.dropped_writes} progress writes were dropped: "
        "the output was not read while the run went on\n"
    )


def _read_until_closed(read_fd: int, into: bytearray) -> None:
    while chunk := os.read(read_fd, 1 << 16):
        into.extend(chunk)


def test_it_tells_a_terminal_from_a_file() -> None:
    out = UnblockedOut(io.StringIO())
    assert not out.isatty()
    out.close()
    assert out.closed
    assert out.write("after close") == 0

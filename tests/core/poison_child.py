"""A small batch-loop worker for the quarantine tests, run as a child process.

``python -m tests.core.poison_child BOOTSTRAP PROGRESS_DIR LAST``: copies ``images.raw`` to
``candidates`` under a :class:`~processors.core.runner.Runner` (settings from the environment,
faults from ``SKYLOOP_FAULTS``) and stops once it has handled offset ``LAST`` of partition 0.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from processors.core.config import load_settings
from processors.core.control import ControlState
from processors.core.runner import InMessage, OutMessage, RunContext, Runner, StopSignal


class Copy:
    """Copies every images.raw message to candidates; sets ``stop`` after offset ``last``."""

    name = "copy"
    inputs = ("images.raw",)

    def __init__(self, stop: StopSignal | None = None, last: int | None = None) -> None:
        self.stop, self.last = stop, last
        self.seen: list[bytes] = []

    def setup(self, ctx: RunContext) -> None:
        pass

    def close(self) -> None:
        pass

    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        self.seen.extend(m.value for m in batch)
        if self.stop is not None and any(m.offset == self.last for m in batch):
            self.stop.event.set()
        return [OutMessage("candidates", m.key or b"", m.value, m.partition) for m in batch]


def main(argv: list[str]) -> int:
    bootstrap, progress, last = argv[0], Path(argv[1]), int(argv[2])
    stop = StopSignal().install()
    runner = Runner(
        Copy(stop, last),
        load_settings(),
        bootstrap,
        stop=stop,
        progress_dir=progress,
        batch_size=4,
        max_wait_s=0.1,
    )
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Refinement guard: which of a lane's images the drift tests have cleared for a reference.

Pure (no I/O, no clock). A refinement grows a calibration's reference with images served since
it. An image may join only once the drift tests had their chance to object to it: a change is
raised ``consecutive`` disjoint windows after it begins (the detection lag), so an image is
*cleared* when the judged windows after it cover at least ``lag = consecutive x window`` images
and every window judged since the last objection agreed with the calibration, none *leaning*
(a window that disagrees, or a sequential statistic above half its threshold, see
:mod:`processors.policies.sequential`). An objection restarts the clean run from the end of
the window it was raised on, so no image before a leaning window is cleared by it.

Invariant (what the tests hold it to): every image below :attr:`Clearance.cleared_to` is
followed by at least ``lag`` images, all in windows judged clean after the newest objection
that preceded them; ``cleared_to`` never decreases within a calibration epoch. A refine's
reference ends at ``cleared_to``, never at the newest image; a drift's recalibration starts at
the change point its test finds and supersedes whatever refine reached past it.

Example (windows of 64, two needed: images are cleared 128 behind the newest clean window):
    >>> c = Clearance(cleared_to=128, clean_from=128)
    >>> [c.judged(end, clean=True, lag=128) for end in (192, 256, 272)]
    [128, 128, 144]
    >>> c.judged(288, clean=False, lag=128), c.clean_from
    (144, 288)
    >>> [c.judged(end, clean=True, lag=128) for end in (400, 416, 432)]
    [144, 288, 304]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Clearance", "refine_span"]


@dataclass
class Clearance:
    """``cleared_to``: images with seq below it are cleared; ``clean_from``: the clean run's
    first seq (the end of the newest objected window, or the calibration's reference end)."""

    cleared_to: int = 0
    clean_from: int = 0

    def judged(self, end: int, clean: bool, lag: int) -> int:
        """Account a window judged on the images before seq ``end``; the new ``cleared_to``."""
        if not clean:
            self.clean_from = max(self.clean_from, end)
            return self.cleared_to
        candidate = end - lag
        if candidate >= self.clean_from:
            self.cleared_to = max(self.cleared_to, candidate)
        return self.cleared_to

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Clearance:
        return cls(**data)


def refine_span(
    cleared_to: int, epoch_start: int, reference_rows: int, growth: float, max_rows: int
) -> tuple[int, int] | None:
    """The next refinement's reference ``[start, cleared_to)``, or None when not yet due.

    Due when the epoch's cleared images fill ``reference_rows x growth`` (at most ``max_rows``).
    The reference is then the largest size on that ladder (``x growth`` each step) that the
    cleared images fill: when clearance comes in one jump (after a window that leaned), one
    refinement takes the whole step, not one per rung on consecutive images.

    >>> refine_span(200, 0, 128, 1.5, 1024), refine_span(280, 100, 128, 1.5, 1024)
    ((8, 200), None)
    >>> refine_span(480, 0, 128, 1.5, 1024)  # 192 and 288 are due too: straight to 432
    (48, 480)
    """
    rows = int(reference_rows * growth)
    available = cleared_to - epoch_start
    if rows > max_rows or available < rows:
        return None
    while int(rows * growth) <= min(max_rows, available):
        rows = int(rows * growth)
    return cleared_to - rows, cleared_to

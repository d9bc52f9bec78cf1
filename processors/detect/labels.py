"""Which candidates become pseudo-labels: an explicit, configurable quality policy.

Pure (no I/O). A candidate is a *pseudo-label* (a training sample for the detector) when all
of these hold, else it is *rejected* with the first reason that failed:

1. the detectors agree: at least ``min_votes`` (default 3, all of them) voted for it;
2. it is confident: its calibrated ensemble score is at least ``min_score`` (default 0.98,
   i.e. beyond 98 % of its source's reference images);
3. it has a box from its own pixels with confidence at least ``min_box_confidence``
   (default 0.5); boxes are never invented, so a candidate without one cannot teach a
   localizer anything;
4. the cross-match policy (``crossmatch``) accepts it:

   - ``unmatched`` (default): a candidate that sits on a known catalog object is explained by
     it (a bright star's saturation spike, a catalogued galaxy): reject it; an unmatched one is
     what we look for;
   - ``matched``: only candidates with a catalog counterpart (to learn known classes);
   - ``any``: the cross-match does not matter.

   Catalogs listed in ``ignore_catalogs`` (default: the ZTF alert's own solar-system field,
   ``ztf:ss``, which says where a known asteroid is, not what the image shows) never count.

Example:
    >>> policy = PseudoLabelPolicy()
    >>> box = {"label": "source", "confidence": 0.9, "x1": 1.0, "y1": 1.0, "x2": 5.0, "y2": 5.0}
    >>> policy.judge(votes_for=3, ensemble_score=0.995, boxes=[box], matched_catalogs=[])
    ('pseudo_label', 'confident, unmatched')
    >>> policy.judge(3, 0.995, [box], ["gaia"])
    ('rejected', 'on a catalog object (gaia)')
    >>> policy.judge(2, 0.995, [box], [])
    ('rejected', 'votes 2 < 3')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from processors.core.records import Box

__all__ = ["CrossmatchRule", "LabelStatus", "PseudoLabelPolicy"]

CrossmatchRule = Literal["unmatched", "matched", "any"]
LabelStatus = Literal["pseudo_label", "rejected"]


@dataclass(frozen=True)
class PseudoLabelPolicy:
    min_votes: int = 3
    min_score: float = 0.98
    min_box_confidence: float = 0.5
    crossmatch: CrossmatchRule = "unmatched"
    ignore_catalogs: tuple[str, ...] = ("ztf:ss",)

    def __post_init__(self) -> None:
        if self.crossmatch not in ("unmatched", "matched", "any"):
            raise ValueError(f"crossmatch {self.crossmatch!r}: accepted: unmatched, matched, any")

    def judge(
        self,
        votes_for: int,
        ensemble_score: float,
        boxes: Sequence[Box],
        matched_catalogs: Sequence[str],
    ) -> tuple[LabelStatus, str]:
        """The label status of a candidate and why."""
        if votes_for < self.min_votes:
            return "rejected", f"votes {votes_for} < {self.min_votes}"
        if not ensemble_score >= self.min_score:
            return "rejected", f"score {ensemble_score:.3f} < {self.min_score}"
        if not any(b["confidence"] >= self.min_box_confidence for b in boxes):
            return "rejected", f"no box with confidence >= {self.min_box_confidence}"
        catalogs = sorted({c for c in matched_catalogs if c not in self.ignore_catalogs})
        if self.crossmatch == "unmatched" and catalogs:
            return "rejected", f"on a catalog object ({', '.join(catalogs)})"
        if self.crossmatch == "matched" and not catalogs:
            return "rejected", "no catalog counterpart"
        matched = f"matched ({', '.join(catalogs)})" if catalogs else "unmatched"
        return "pseudo_label", f"confident, {matched}"

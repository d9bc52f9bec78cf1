"""Which candidates become pseudo-labels: an explicit, configurable quality policy.

Pure (no I/O). A candidate is a *pseudo-label* (a training sample for the detector) when all
of these hold, else it is *rejected* with the first reason that failed:

1. the detectors agree: at least ``min_votes`` (default 2, the ensemble's own ``vote_k``)
   voted for it; requiring all three would make the energy score, near chance on star fields
   (BENCHMARKS.md), a veto;
2. it is confident: the ``min_votes``-th largest of its calibrated detector scores is at least
   ``min_score`` (default 0.98: that many detectors put it beyond 98 % of its source's
   reference images); the ensemble mean would let one weak detector dilute two sure ones;
3. it has a box from its own pixels with confidence at least ``min_box_confidence``
   (default 0.5); boxes are never invented, so a candidate without one cannot teach a
   localizer anything;
4. the cross-match policy (``crossmatch``) accepts it:

   - ``unmatched`` (default): a candidate on a catalogued *star* (match kind ``star``, within
     the catalog's radius, which grows with a bright star's magnitude) is explained by it: a
     saturation spike, a bleed trail, a variable star; reject it. A galaxy counterpart is no
     explanation (a supernova sits in its host), so it does not count;
   - ``matched``: only candidates with a catalog counterpart of any kind (to learn known
     classes);
   - ``any``: the cross-match does not matter.

   Catalogs listed in ``ignore_catalogs`` (default: the ZTF alert's own solar-system field,
   ``ztf:ss``, which says where a known asteroid is, not what the image shows) never count.

Example:
    >>> policy = PseudoLabelPolicy()
    >>> box = {"label": "source", "confidence": 0.9, "x1": 1.0, "y1": 1.0, "x2": 5.0, "y2": 5.0}
    >>> scores = {"mahalanobis": 0.999, "knn": 0.99, "energy": 0.1}
    >>> policy.judge(votes_for=2, scores=scores, boxes=[box], matches=[])
    ('pseudo_label', 'confident, unmatched')
    >>> star = {"catalog": "gaia", "object_id": "1", "separation_arcsec": 9.0, "kind": "star"}
    >>> policy.judge(2, scores, [box], [star])
    ('rejected', 'on a catalogued star (gaia)')
    >>> policy.judge(2, scores, [box], [{**star, "catalog": "openngc", "kind": "galaxy"}])
    ('pseudo_label', 'confident, matched (openngc), no star')
    >>> policy.judge(2, {**scores, "knn": 0.95}, [box], [])
    ('rejected', '2nd score 0.950 < 0.98')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from processors.core.records import Box, CrossMatch

__all__ = ["CrossmatchRule", "LabelStatus", "PseudoLabelPolicy"]

CrossmatchRule = Literal["unmatched", "matched", "any"]
LabelStatus = Literal["pseudo_label", "rejected"]


@dataclass(frozen=True)
class PseudoLabelPolicy:
    min_votes: int = 2
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
        scores: Mapping[str, float],
        boxes: Sequence[Box],
        matches: Sequence[CrossMatch],
    ) -> tuple[LabelStatus, str]:
        """The label status of a candidate (its votes and calibrated detector scores) and why."""
        if votes_for < self.min_votes:
            return "rejected", f"votes {votes_for} < {self.min_votes}"
        ranked = sorted(scores.values(), reverse=True)
        kth = ranked[self.min_votes - 1] if len(ranked) >= self.min_votes else float("nan")
        if not kth >= self.min_score:
            nth = {1: "1st", 2: "2nd", 3: "3rd"}.get(self.min_votes, f"{self.min_votes}th")
            return "rejected", f"{nth} score {kth:.3f} < {self.min_score}"
        if not any(b["confidence"] >= self.min_box_confidence for b in boxes):
            return "rejected", f"no box with confidence >= {self.min_box_confidence}"
        counted = [m for m in matches if m["catalog"] not in self.ignore_catalogs]
        catalogs = sorted({m["catalog"] for m in counted})
        stars = sorted({m["catalog"] for m in counted if m.get("kind") == "star"})
        if self.crossmatch == "unmatched" and stars:
            return "rejected", f"on a catalogued star ({', '.join(stars)})"
        if self.crossmatch == "matched" and not catalogs:
            return "rejected", "no catalog counterpart"
        if not catalogs:
            return "pseudo_label", "confident, unmatched"
        suffix = ", no star" if self.crossmatch == "unmatched" else ""
        return "pseudo_label", f"confident, matched ({', '.join(catalogs)}){suffix}"

"""The SQL of the report's decision, self-correction, sky and health figures.

The conventions of :mod:`processors.report.queries` hold (``FINAL``, half-open ``[start, end)``
windows on each table's own time, production role only, deterministic order).

Candidacy is the scorer's k-of-n vote (ARCHITECTURE.md, "Self-correction";
``OODEnsemble.decide``): a detector votes when its calibrated score is strictly above its
threshold, and an image is a candidate when at least ``votes_needed`` detectors vote. The
*vote margin* of an image is therefore its ``votes_needed``-th largest ``score - threshold``
over the detectors: the image is a candidate exactly when that margin is above 0, so a
histogram of margins with a line at 0 shows why each image was or was not flagged.
Uncalibrated scores carry no thresholds and never vote: they are counted apart, never binned.
"""

from __future__ import annotations

from processors.report.sql import in_window

__all__ = [
    "ACTIVITY",
    "CONTROL_MARKS",
    "FLAG_WINDOWS",
    "PROCESSING_RATE",
    "SKY_POSITIONS",
    "TARGET_RATES",
    "UNCALIBRATED",
    "VOTES",
    "VOTE_MARGINS",
]

_MARGIN = (
    "arrayReverseSort(arrayMap(d -> scores[d] - thresholds[d], mapKeys(thresholds)))[votes_needed]"
)

VOTE_MARGINS = f"""
SELECT source, is_candidate,
       toInt32(least(greatest(ceil(({_MARGIN} + 1.0) * {{bins:UInt32}} / 2.0) - 1.0, 0.0),
                     {{bins:UInt32}} - 1.0)) AS bin,
       count() AS n
FROM scores FINAL
WHERE role = 'production' AND calibrated = 1 AND length(thresholds) >= votes_needed
  AND votes_needed >= 1 AND {in_window("scored_at")}
GROUP BY source, is_candidate, bin
ORDER BY source, is_candidate, bin
"""
"""Calibrated production scores binned by vote margin on ``[-1, 1]`` into ``bins`` bins (an
even number) that are open on the left, ``(lo, hi]``: a margin of exactly 0 (no vote) falls
left of the line at 0, so every candidate's bin lies right of it."""

VOTES = f"""
SELECT source, votes_for, votes_needed, is_candidate, count() AS n
FROM scores FINAL
WHERE role = 'production' AND calibrated = 1 AND {in_window("scored_at")}
GROUP BY source, votes_for, votes_needed, is_candidate
ORDER BY source, votes_needed, votes_for, is_candidate
"""
"""Calibrated production scores per source by detectors voting, votes needed and verdict."""

UNCALIBRATED = f"""
SELECT source, count() AS n, min(scored_at) AS first_at, max(scored_at) AS last_at
FROM scores FINAL
WHERE role = 'production' AND calibrated = 0 AND {in_window("scored_at")}
GROUP BY source
ORDER BY source
"""
"""Production scores made before their source's first calibration (no thresholds, no vote)."""

FLAG_WINDOWS = f"""
SELECT source, intDiv(rn - 1, {{window:UInt32}}) AS w, count() AS n,
       sum(live_is_candidate) AS flagged, sum(is_candidate) AS revised_flagged,
       min(scored_at) AS first_at, max(scored_at) AS last_at
FROM (
    SELECT source, is_candidate, live_is_candidate, scored_at,
           row_number() OVER (PARTITION BY source ORDER BY scored_at, image_id) AS rn
    FROM scores_revised
    WHERE role = 'production' AND calibrated = 1 AND {in_window("scored_at")}
)
GROUP BY source, w
ORDER BY source, w
"""
"""Calibrated production scores per source in consecutive windows of ``window`` images in
scoring order (ties by image id): size, flags as served and after every revision
(``scores_revised``), and time span of each window; the last window of a source may be
partial."""

TARGET_RATES = """
SELECT subject AS source, at, JSONExtractFloat(params, 'target_fpr') AS target_fpr,
       kafka_offset
FROM control_events FINAL
WHERE type = 'calibration.updated' AND at < {end:DateTime64(3, 'UTC')}
ORDER BY source, kafka_offset, at
"""
"""Every calibration up to the window's end with the target rate it was made for (0 in older
logs that did not record it), in log order: the target in force at any time."""

CONTROL_MARKS = f"""
SELECT at, type, subject, ifNull(reason, '') AS reason
FROM control_events FINAL
WHERE {in_window("at")}
ORDER BY at, kafka_offset, event_id
LIMIT {{limit:UInt32}}
"""
"""Control events of the window to mark on the flag-rate figure, in time order."""

SKY_POSITIONS = f"""
SELECT source, ra, dec, count() AS n
FROM images FINAL
WHERE {in_window("fetched_at")}
GROUP BY source, ra, dec
ORDER BY source, ra, dec
"""
"""Images of the window per source and position (NULL ra/dec: no position), one row per
distinct position so a day of repeated fields stays small."""

PROCESSING_RATE = f"""
SELECT 'ingested' AS stage, toStartOfInterval(fetched_at, INTERVAL {{bin_s:UInt32}} SECOND)
           AS t, count() AS n
FROM images FINAL WHERE {in_window("fetched_at")} GROUP BY t
UNION ALL
SELECT 'scored' AS stage, toStartOfInterval(scored_at, INTERVAL {{bin_s:UInt32}} SECOND) AS t,
       count() AS n
FROM scores FINAL WHERE role = 'production' AND {in_window("scored_at")} GROUP BY t
ORDER BY stage, t
"""
"""Images ingested (by ``fetched_at``) and scored (production, by ``scored_at``) per
``bin_s``-second bin."""

ACTIVITY = f"""
SELECT min(scored_at) AS first_at, max(scored_at) AS last_at, count() AS n
FROM scores FINAL WHERE role = 'production' AND {in_window("scored_at")}
"""
"""The span of the window's production scoring (NULL times without scores)."""

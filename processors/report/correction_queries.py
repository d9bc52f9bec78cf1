"""The SQL of the report's self-correction section: drift, calibrations, pauses, thresholds.

The conventions of :mod:`processors.report.queries` hold (``FINAL``, half-open ``[start, end)``
windows on ``control_events.at``, deterministic order); :data:`THRESHOLD_EVENTS` alone reads from
the log's start, so folding it gives the threshold in force when the window opens.
"""

from __future__ import annotations

from processors.report.sql import in_window

__all__ = [
    "CALIBRATIONS",
    "CONTROL_EVENT_COUNTS",
    "DRIFT_DETECTIONS",
    "PAUSES",
    "REVISIONS",
    "THRESHOLD_EVENTS",
]

CONTROL_EVENT_COUNTS = f"""
SELECT type, issued_by, count() AS n, min(at) AS first_at, max(at) AS last_at
FROM control_events FINAL
WHERE {in_window("at")}
GROUP BY type, issued_by
ORDER BY type, issued_by
"""
"""Control events of the window per type and issuer."""

DRIFT_DETECTIONS = f"""
SELECT at, subject, ifNull(model_version, '') AS model_version, ifNull(reason, '') AS reason,
       if(mapContains(evidence, 'ks_p'), evidence['ks_p'], NULL) AS ks_p,
       if(mapContains(evidence, 'psi'), evidence['psi'], NULL) AS psi,
       if(mapContains(evidence, 'flag_rate'), evidence['flag_rate'], NULL) AS flag_rate,
       if(mapContains(evidence, 'expected_flag_rate'), evidence['expected_flag_rate'], NULL)
           AS expected_flag_rate,
       event_id
FROM control_events FINAL
WHERE type = 'drift.detected' AND {in_window("at")}
ORDER BY at, kafka_offset, event_id
LIMIT {{limit:UInt32}}
"""
"""``drift.detected`` events of the window with the evidence that raised them; a statistic
the drift test did not compute is NULL (a missing map key would read as 0)."""

REVISIONS = f"""
SELECT at, subject, ifNull(model_version, '') AS model_version,
       toUInt32(evidence['revision']) AS revision, toUInt32(evidence['images']) AS images,
       toUInt32(evidence['flags_before']) AS flags_before,
       toUInt32(evidence['flags_after']) AS flags_after,
       toUInt32(evidence['withdrawn']) AS withdrawn, toUInt32(evidence['added']) AS added,
       JSONExtractString(params, 'extra', 'calibration') AS calibration, event_id
FROM control_events FINAL
WHERE type = 'decisions.revised' AND {in_window("at")}
ORDER BY at, kafka_offset, event_id
LIMIT {{limit:UInt32}}
"""
"""``decisions.revised`` events of the window with their evidence: the images decided again
since a drift's change point, their flags as served and as revised, withdrawn and added."""

CALIBRATIONS = f"""
SELECT subject, model_version, sum(n) AS calibrations,
       arrayStringConcat(arrayMap(r -> concat(r.1, ' ', toString(r.2)),
                                  arraySort(groupArray((reason, n)))), ', ') AS reasons,
       min(first_at) AS first_at, max(last_at) AS last_at,
       argMax(last_max_threshold, last_key) AS last_max_threshold
FROM (
    SELECT subject, ifNull(model_version, '') AS model_version,
           if(ifNull(reason, '') = '', '(none)', reason) AS reason, count() AS n,
           min(at) AS first_at, max(at) AS last_at, max((at, kafka_offset)) AS last_key,
           argMax(if(length(t) > 0, arrayMax(mapValues(t)), nan), (at, kafka_offset))
               AS last_max_threshold
    FROM (
        SELECT subject, model_version, reason, at, kafka_offset,
               JSONExtract(params, 'thresholds', 'Map(String, Float64)') AS t
        FROM control_events FINAL
        WHERE type = 'calibration.updated' AND {in_window("at")}
    )
    GROUP BY subject, model_version, reason
)
GROUP BY subject, model_version
ORDER BY subject, model_version
"""
"""``calibration.updated`` events of the window per subject (source) and model: how many, by
reason (``initial``, ``refine``, ``drift``, ``operator``), and the highest detector threshold
of the latest one (NaN when it carried none)."""

PAUSES = f"""
SELECT at, type, subject, issued_by, ifNull(reason, '') AS reason,
       parseDateTime64BestEffortOrNull(JSONExtractString(params, 'until'), 3, 'UTC') AS until,
       event_id
FROM control_events FINAL
WHERE type IN ('source.paused', 'source.resumed', 'pipeline.paused', 'pipeline.resumed')
  AND {in_window("at")}
ORDER BY at, kafka_offset, event_id
LIMIT {{limit:UInt32}}
"""
"""Source and pipeline pauses and resumes of the window, with their reason and ``until``
(NULL: paused until resumed)."""

THRESHOLD_EVENTS = """
SELECT at, type, subject, issued_by, params, caused_by, event_id, kafka_offset
FROM control_events FINAL
WHERE type IN ('calibration.updated', 'threshold.decayed', 'threshold.set')
  AND at < {end:DateTime64(3, 'UTC')}
ORDER BY kafka_offset, at, event_id
"""
"""Every event that sets a threshold, from the start of the log to the window's end, in log
order (``kafka_offset`` of the one-partition ``control.events``): folding them gives the
threshold in force at the window's start and each change within it."""

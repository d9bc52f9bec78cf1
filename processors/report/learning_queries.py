"""The SQL of the report's learning-loop sections: cross-matches, bright stars, pseudo-labels and
the model lifecycle. The conventions of :mod:`processors.report.queries` hold (``FINAL``,
half-open ``[start, end)`` windows on each table's own time, deterministic order).

The bright-star rule is evaluated here, in SQL over the arrays parallel to
``candidates.crossmatches`` (``crossmatch_magnitudes``, ``crossmatch_kinds``, migration 006),
because the report may not import another processor: a match is *next to a bright star* when its
kind is ``'star'``, its magnitude is at most :data:`BRIGHT_STAR_MAGNITUDE` and its separation is
within ``max(1.5″, min(600″, 1630″ · 1.396^(-m)))``. That is the detect processor's
``near_bright_star`` rule with its constants; ``tests/report`` checks the two agree. A candidate
written before migration 006 has empty parallel arrays: its matches read magnitude and kind NULL
and are never bright.
"""

from __future__ import annotations

from processors.core.events import EventType
from processors.report.sql import in_window

__all__ = [
    "BRIGHT_STAR_BASE",
    "BRIGHT_STAR_COUNTS",
    "BRIGHT_STAR_MAGNITUDE",
    "BRIGHT_STAR_MAX_ARCSEC",
    "BRIGHT_STAR_MIN_ARCSEC",
    "BRIGHT_STAR_NEIGHBOURS",
    "BRIGHT_STAR_R0_ARCSEC",
    "CANDIDATE_CROSSMATCHES",
    "DATASET",
    "LABEL_REASONS",
    "LEARNING_QUERIES",
    "LIFECYCLE_EVENTS",
    "LIFECYCLE_TYPES",
    "MODEL_EVENTS",
    "PSEUDO_LABELS",
    "bright_star_radius_sql",
]

BRIGHT_STAR_MAGNITUDE = 14.0
BRIGHT_STAR_R0_ARCSEC = 1630.0
BRIGHT_STAR_BASE = 1.396
BRIGHT_STAR_MAX_ARCSEC = 600.0
BRIGHT_STAR_MIN_ARCSEC = 1.5
"""The detect processor's point-source radius: a bright star matches at least this far out."""

LIFECYCLE_TYPES: tuple[str, ...] = tuple(
    t.value
    for t in (
        EventType.RETRAIN_REQUESTED,
        EventType.BUDGET_DEFERRED,
        EventType.MODEL_REGISTERED,
        EventType.MODEL_GATE_PASSED,
        EventType.MODEL_GATE_FAILED,
        EventType.MODEL_SHADOW_STARTED,
        EventType.MODEL_CANARY_STARTED,
        EventType.MODEL_PROMOTED,
        EventType.MODEL_ROLLED_BACK,
    )
)


def bright_star_radius_sql(magnitude: str) -> str:
    """SQL for the radius (arcsec) within which a star of ``magnitude`` spoils a candidate."""
    return (
        f"greatest({BRIGHT_STAR_MIN_ARCSEC}, least({BRIGHT_STAR_MAX_ARCSEC}, "
        f"{BRIGHT_STAR_R0_ARCSEC} * pow({BRIGHT_STAR_BASE}, -{magnitude})))"
    )


# One row per cross-match of the window's candidates: element i of crossmatches with element i
# of the parallel arrays (an index past their end reads NULL, as for candidates written before
# them), and whether that match is a bright star close enough to matter.
_MATCHES = f"""
    SELECT image_id, source, model_version, ensemble_score, label_status, ra, dec, detected_at,
           arrayJoin(arrayEnumerate(crossmatches)) AS i,
           crossmatches[i].catalog AS catalog, crossmatches[i].object_id AS object_id,
           crossmatches[i].separation_arcsec AS separation_arcsec,
           crossmatch_magnitudes[i] AS magnitude, crossmatch_kinds[i] AS kind,
           if(magnitude IS NULL, NULL, {bright_star_radius_sql("assumeNotNull(magnitude)")})
               AS bright_radius_arcsec,
           ifNull(kind = 'star' AND isFinite(assumeNotNull(magnitude))
                  AND magnitude <= {BRIGHT_STAR_MAGNITUDE}
                  AND separation_arcsec <= bright_radius_arcsec, 0) AS near_bright
    FROM candidates FINAL
    WHERE length(crossmatches) > 0 AND {in_window("detected_at")}
"""

CANDIDATE_CROSSMATCHES = f"""
SELECT image_id, source, model_version, ensemble_score, label_status, catalog, object_id,
       separation_arcsec, magnitude, kind, near_bright
FROM ({_MATCHES})
WHERE (image_id, model_version) IN (
    SELECT image_id, model_version FROM candidates FINAL
    WHERE length(crossmatches) > 0 AND {in_window("detected_at")}
    ORDER BY ensemble_score DESC, image_id, model_version
    LIMIT {{limit:UInt32}})
ORDER BY ensemble_score DESC, image_id, model_version, separation_arcsec, catalog, object_id
"""
"""Every cross-match (catalog, object id, separation, magnitude, kind, whether it is a bright
star near enough to matter) of the ``limit`` highest-scoring candidates of the window that have
any, nearest first within a candidate."""

BRIGHT_STAR_NEIGHBOURS = f"""
SELECT m.image_id AS image_id, m.source AS source, m.model_version AS model_version,
       m.ensemble_score AS ensemble_score, m.label_status AS label_status, m.ra AS ra,
       m.dec AS dec, i.object_id AS alert_object,
       m.stars AS stars, m.nearest AS nearest
FROM (
    SELECT image_id, source, model_version, any(ensemble_score) AS ensemble_score,
           any(label_status) AS label_status, any(ra) AS ra, any(dec) AS dec,
           count() AS stars,
           argMin((catalog, object_id, magnitude, separation_arcsec, bright_radius_arcsec),
                  (separation_arcsec, catalog, object_id)) AS nearest
    FROM ({_MATCHES})
    WHERE near_bright = 1
    GROUP BY image_id, source, model_version
) AS m
LEFT JOIN (
    SELECT image_id,
           if(mapContains(provenance, 'objectId'), provenance['objectId'],
              provenance['object_id']) AS object_id
    FROM images FINAL
) AS i ON i.image_id = m.image_id
ORDER BY ensemble_score DESC, image_id, model_version
LIMIT {{limit:UInt32}}
"""
"""The window's candidates next to a bright star: how many bright-star matches each has and the
nearest one as ``(catalog, object_id, magnitude, separation, radius)``; ``alert_object`` is the
ZTF objectId of the image when it came from an alert ('' otherwise)."""

BRIGHT_STAR_COUNTS = f"""
SELECT
    (SELECT count() FROM candidates FINAL WHERE {in_window("detected_at")}) AS candidates,
    (SELECT count() FROM candidates FINAL
     WHERE length(crossmatches) > 0 AND {in_window("detected_at")}) AS matched,
    (SELECT uniqExact(image_id, model_version) FROM ({_MATCHES}) WHERE near_bright = 1)
        AS near_bright
"""
"""One row: the window's candidates, those with any cross-match, those next to a bright star."""

MODEL_EVENTS = """
SELECT at, type, subject, issued_by, params, evidence, caused_by, event_id, kafka_offset
FROM control_events FINAL
WHERE startsWith(type, 'model.') AND at < {end:DateTime64(3, 'UTC')}
ORDER BY kafka_offset, at, event_id
"""
"""Every ``model.*`` event from the start of the log to the window's end, in log order: folded
by ``registry_view`` into the registry as it stood at the window's end."""

LIFECYCLE_EVENTS = f"""
SELECT at, type, subject, issued_by, ifNull(model_version, '') AS model_version,
       ifNull(reason, '') AS reason, evidence, caused_by, event_id
FROM control_events FINAL
WHERE type IN {LIFECYCLE_TYPES!r} AND {in_window("at")}
ORDER BY kafka_offset, at, event_id
LIMIT {{limit:UInt32}}
"""
"""The window's learning-loop and model-lifecycle events, in log order."""

PSEUDO_LABELS = f"""
SELECT source, count() AS candidates,
       countIf(label_status = 'pseudo_label') AS pseudo_labels,
       countIf(label_status = 'rejected') AS rejected,
       countIf(label_status NOT IN ('pseudo_label', 'rejected')) AS pending,
       countIf(label_status = 'pseudo_label' AND ifNull(sample_id, '') != '') AS samples,
       countIf(length(boxes) > 0) AS with_boxes
FROM candidates FINAL
WHERE {in_window("detected_at")}
GROUP BY source
ORDER BY source
"""
"""Per source: the window's candidates by label status, the pseudo-labels that became training
samples (a ``sample_id``), and the candidates with at least one box."""

LABEL_REASONS = f"""
SELECT label_status,
       replaceRegexpAll(ifNull(label_reason, ''), '\\\\b[0-9]+([.][0-9]+)?\\\\b', '#') AS reason,
       count() AS n, min(ifNull(label_reason, '')) AS example
FROM candidates FINAL
WHERE {in_window("detected_at")}
GROUP BY label_status, reason
ORDER BY n DESC, label_status, reason
"""
"""The window's label reasons per status, numbers replaced by ``#`` so that "score 0.973 <
0.98" and "score 0.951 < 0.98" count as one reason; ``example`` is one of them verbatim."""

DATASET = f"""
SELECT image_id,
       (SELECT count() FROM control_events FINAL
        WHERE type = '{EventType.RETRAIN_REQUESTED.value}'
          AND at < {{end:DateTime64(3, 'UTC')}}) AS retrain_requests
FROM candidates FINAL
WHERE label_status = 'pseudo_label' AND ifNull(sample_id, '') != ''
  AND detected_at < {{end:DateTime64(3, 'UTC')}}
ORDER BY image_id
"""
"""The image ids of every pseudo-label stored as a training sample from the start to the
window's end (the dataset is the run's, not the day's), each with the number of
``retrain.requested`` events by then (the same on every row)."""

LEARNING_QUERIES: dict[str, str] = {
    "candidate_crossmatches": CANDIDATE_CROSSMATCHES,
    "bright_star_neighbours": BRIGHT_STAR_NEIGHBOURS,
    "bright_star_counts": BRIGHT_STAR_COUNTS,
    "model_events": MODEL_EVENTS,
    "lifecycle_events": LIFECYCLE_EVENTS,
    "pseudo_labels": PSEUDO_LABELS,
    "label_reasons": LABEL_REASONS,
    "dataset": DATASET,
}
"""The learning-loop queries by name; parameters as for ``processors.report.queries.QUERIES``."""

"""The report's cross-match sections: each candidate's catalog counterparts, and the candidates
that sit next to a bright star.

Both render rows of :mod:`processors.report.learning_queries` (``candidate_crossmatches``,
``bright_star_counts``, ``bright_star_neighbours``), which evaluate the bright-star rule in SQL
(see that module for why and what the rule is). Pure: rows in, Markdown lines out, in the rows'
order (which the queries make deterministic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from processors.report.learning_queries import BRIGHT_STAR_MAGNITUDE
from processors.report.markdown import number, short, table

__all__ = ["bright_star_section", "crossmatch_section"]


def crossmatch_section(rows: Sequence[Mapping[str, Any]], limit: int) -> list[str]:
    """*Cross-matches*: one row per match, grouped by candidate (highest score first), nearest
    match first; the candidate's columns are filled on its first row only. Empty (no section)
    when no candidate of the window has a match."""
    if not rows:
        return []
    lines = ["## Cross-matches", ""]
    out = []
    previous: tuple[str, str] | None = None
    for r in rows:
        key = (r["image_id"], r["model_version"])
        first = key != previous
        previous = key
        out.append(
            (
                short(r["image_id"]) if first else "",
                r["source"] if first else "",
                number(r["ensemble_score"]) if first else "",
                r["label_status"] if first else "",
                r["catalog"],
                r["object_id"],
                number(r["separation_arcsec"], 2),
                number(r["magnitude"], 2),
                r["kind"],
                "yes" if r["near_bright"] else "",
            )
        )
    lines += table(
        [
            "Image",
            "Source",
            "Score",
            "Label",
            "Catalog",
            "Object",
            "Separation (″)",
            "Magnitude",
            "Kind",
            "Bright star near",
        ],
        out,
    )
    candidates = len({(r["image_id"], r["model_version"]) for r in rows})
    lines += [
        "",
        f"Catalog counterparts of the {candidates} highest-scoring candidates with any "
        f"(at most {limit}). Catalogs `ztf:*` are the alert's own context (ZTF's nearest PS1 "
        "source, Gaia stars, known solar-system object, reference source). Magnitude and kind "
        "are — for matches recorded before they were kept.",
    ]
    return lines


def bright_star_section(counts: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """*Next to a bright star*: a count line over all the window's candidates, then the
    candidates (highest score first) with their nearest bright star. Empty when the window has
    no candidate with a cross-match."""
    matched = int(counts["matched"])
    if not matched:
        return []
    near, total = int(counts["near_bright"]), int(counts["candidates"])
    lines = [
        "## Next to a bright star",
        "",
        f"**{near} of {total} flagged candidates** ({matched} with a cross-match) sit next to a "
        f"bright star: a match of kind star, magnitude ≤ {BRIGHT_STAR_MAGNITUDE:g}, within the "
        "radius its light reaches (1630″ · 1.396^(-m), at least 1.5″, at most 600″). Such a "
        "flag is often a saturation artefact, a diffraction spike or a ghost, not a new source.",
    ]
    if not rows:
        return lines
    lines.append("")
    out = []
    for r in rows:
        catalog, object_id, magnitude, separation, radius = r["nearest"]
        position = None
        if r["ra"] is not None and r["dec"] is not None:
            position = f"{r['ra']:.5f}, {r['dec']:+.5f}"
        out.append(
            (
                short(r["image_id"]),
                r["source"],
                r["alert_object"],
                number(r["ensemble_score"]),
                position,
                f"{catalog}:{object_id}",
                number(magnitude, 2),
                number(separation, 1),
                number(radius, 1),
                r["stars"],
                r["label_status"],
            )
        )
    lines += table(
        [
            "Image",
            "Source",
            "Alert object",
            "Score",
            "RA, Dec (deg)",
            "Nearest bright star",
            "Magnitude",
            "Separation (″)",
            "Radius (″)",
            "Bright matches",
            "Label",
        ],
        out,
    )
    if len(rows) < near:
        lines += ["", f"The {len(rows)} highest-scoring of {near} shown."]
    return lines

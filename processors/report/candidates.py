"""The daily report's per-image sections: top candidates with thumbnails, and ZTF objects.

:func:`candidates_section` writes one PNG thumbnail per candidate (its boxes drawn) under the
thumbnails folder and returns the paths it wrote; :func:`ztf_section` is pure. Values are
formatted with :mod:`processors.report.markdown`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from processors.core.exceptions import BadImageError
from processors.report.markdown import clip, number, table, when
from processors.report.plots import thumbnail_png

__all__ = ["candidates_section", "ztf_section"]


def _thumbnail(row: Mapping[str, Any], thumbs_dir: Path, link_dir: str) -> tuple[str, Path | None]:
    pixels, fmt = row["pixels"], row["format"]
    if not pixels or fmt not in ("fits", "png", "jpeg"):
        return "no pixels", None
    try:
        png = thumbnail_png(bytes(pixels), fmt, boxes=row.get("box_list") or ())
    except BadImageError as exc:
        return f"undecodable ({clip(str(exc), 60)})", None
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    name = f"{row['image_id'][:16]}.png"
    path = thumbs_dir / name
    path.write_bytes(png)
    return f"![{row['image_id'][:12]}]({link_dir}/{name})", path


def _boxes_text(boxes: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{b['label']} {b['confidence']:.2f}" for b in boxes)


def candidates_section(
    rows: Sequence[Mapping[str, Any]], thumbs_dir: Path, link_dir: str
) -> tuple[list[str], list[Path]]:
    lines = ["## Top candidates", ""]
    if not rows:
        return [*lines, "No image was flagged by the production model this day."], []
    written: list[Path] = []
    table_rows = []
    for r in rows:
        cell, path = _thumbnail(r, thumbs_dir, link_dir)
        if path is not None:
            written.append(path)
        truth = r["truth_is_anomaly"]
        truth_text = None if truth is None else ("anomaly" if truth else "normal")
        if truth and r["truth_kind"]:
            truth_text = f"anomaly ({r['truth_kind']})"
        position = None
        if r["ra"] is not None and r["dec"] is not None:
            position = f"{r['ra']:.5f}, {r['dec']:+.5f}"
        table_rows.append(
            (
                cell,
                f"`{r['image_id'][:12]}`",
                r["source"],
                number(r["ensemble_score"]),
                f"{r['votes_for']}/{r['votes_needed']}",
                position,
                r["label_status"],
                _boxes_text(r.get("box_list") or []) or r["box_labels"] or (r["boxes"] or None),
                r["crossmatches"],
                truth_text,
            )
        )
    lines += table(
        [
            "Cutout",
            "Image",
            "Source",
            "Score",
            "Votes",
            "RA, Dec (deg)",
            "Label",
            "Boxes",
            "Cross-matches",
            "Truth",
        ],
        table_rows,
    )
    lines += [
        "",
        f"The {len(rows)} highest ensemble scores flagged by the production model. Each "
        "candidate's boxes are drawn on its cutout, labelled with their confidence.",
    ]
    return lines, written


def ztf_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["## ZTF objects", ""]
    lines += table(
        [
            "objectId",
            "Images",
            "RA (deg)",
            "Dec (deg)",
            "RA, Dec (hms, dms)",
            "Best magpsf",
            "Max rb",
            "Max score",
            "Flagged",
            "Scored",
            "Calibrated",
            "Last seen",
        ],
        [
            (
                r["object_id"],
                r["images"],
                number(r["ra"], 5),
                number(r["dec"], 5),
                _sexagesimal(r["ra"], r["dec"]),
                number(r["best_magpsf"], 2),
                number(r["max_rb"], 2),
                number(r["max_score"]),
                r["flagged"],
                r["scored"],
                r["calibrated"],
                when(r["last_seen"]),
            )
            for r in rows
        ],
    )
    scored = sum(int(r["scored"]) for r in rows)
    uncalibrated = scored - sum(int(r["calibrated"]) for r in rows)
    lines += [
        "",
        "Alerts with an objectId (simulated packets have none). Max score is the best production "
        "ensemble score among calibrated scores.",
    ]
    if uncalibrated:
        lines[-1] += (
            f" {uncalibrated} of the {scored} scored cutouts listed here were scored "
            "`calibrated=false`: a source is calibrated from a reference window of its first "
            "`reference_size` images (default 128; `skyloop run --reference-size N`, at least 20), "
            "and until then its images are scored but never flagged. A stream smaller than the "
            "window, such as a folder of a few alert packets, is never calibrated."
        )
    return lines


def _sexagesimal(ra: float | None, dec: float | None) -> str | None:
    if ra is None or dec is None or not (math.isfinite(ra) and math.isfinite(dec)):
        return None
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    coord = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs")
    return str(coord.to_string("hmsdms", precision=1, sep=":"))

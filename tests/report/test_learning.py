"""The report's learning-loop sections on a warehouse written through the real sink: boxes on
the thumbnails, cross-matches, the bright-star list, pseudo-labels, the model registry, the
learning trajectory and the lifecycle events."""

from __future__ import annotations

import doctest
import io
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from processors.core.clickhouse import Client, connect
from processors.core.datasets import is_held_out
from processors.report import learning as learning_sections
from processors.report import learning_readiness, markdown
from processors.report.daily import ReportSummary, generate_report
from processors.report.learning_queries import LEARNING_QUERIES
from processors.report.learning_readiness import LearningNeeds
from processors.report.plots import thumbnail_png
from processors.sink.migrations import apply_migrations
from tests.report.conftest import add_learning, build_dataset, load

if TYPE_CHECKING:
    from tests.report.conftest import Dataset

DAY = date(2025, 3, 14)


@pytest.fixture(scope="module")
def learning_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReportSummary, Dataset]:
    """The report of the learning-loop warehouse, built once for the tests that only read it
    (the database is closed before any other test opens its own: one chdb path per process)."""
    root = tmp_path_factory.mktemp("learning")
    client = connect(f"chdb://{root / 'ch'}")
    try:
        apply_migrations(client)
        data = add_learning(build_dataset())
        load(client, data)
        needs = LearningNeeds(retrain_min_samples=64, gate_min_held_out=30, held_out_fraction=0.2)
        return generate_report(client, root / "reports", day=DAY, learning_needs=needs), data
    finally:
        client.close()


def _section(md: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, re.S | re.M)
    assert match, f"no section {title!r}"
    return match.group(1)


def _rows(section: str) -> list[list[str]]:
    """The cells of the section's first table, header row first."""
    rows: list[list[str]] = []
    for line in section.splitlines():
        if line.startswith("| "):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows and not line.startswith("|"):
            break
    return rows


def _by_first(section: str) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in _rows(section)}


def test_doctests() -> None:
    for module in (learning_sections, learning_readiness, markdown):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_learning_sections_show_what_was_seeded(
    learning_report: tuple[ReportSummary, Dataset],
) -> None:
    summary, data = learning_report
    out = summary.path.parent
    md = summary.path.read_text()

    # the registry as of the day's end: yolo@4 (next day) is not there yet
    registry = _by_first(_section(md, "Model registry"))
    assert list(registry) == ["Version", "`yolo@1`", "`yolo@2`", "`yolo@3`", "`m2`"]
    head = registry["Version"]
    role, gate, metrics, parent = (head.index(h) for h in ("Role", "Gate", "Metrics", "Parent"))
    assert registry["`yolo@1`"][role] == "**production**"
    assert registry["`yolo@2`"][role] == "**rolled back**"
    assert registry["`yolo@2`"][gate] == "passed" and registry["`yolo@2`"][parent] == "yolo@1"
    assert (registry["`yolo@3`"][role], registry["`yolo@3`"][gate]) == ("rejected", "failed")
    assert registry["`m2`"][:2] == ["scorer", "shadow"]
    # the gate's figure wins over the registration's
    assert "map50=0.42" in registry["`yolo@1`"][metrics] and "map50=0.99" not in md
    assert "`aaaaaaaaaaaa`" in registry["`yolo@1`"]
    assert "yolo@4" not in md

    trajectory = _rows(_section(md, "Learning trajectory"))
    assert trajectory[0] == [
        "Cycle",
        "Detector version",
        "Parent",
        "Training samples",
        "Held-out images",
        "Held-out mAP50",
        "Production mAP50 at gate",
        "Difference interval",
        "Gate",
        "Role",
    ]
    assert trajectory[1:] == [
        ["1", "`yolo@1`", "—", "40", "9", "0.420", "—", "—", "passed", "production"],
        ["2", "`yolo@2`", "yolo@1", "95", "—", "0.580", "0.420", "—", "passed", "rolled back"],
        ["3", "`yolo@3`", "yolo@1", "130", "—", "0.210", "0.420", "—", "failed", "rejected"],
    ]
    figure = out / "report-2025-03-14-map50.png"
    assert figure in summary.plots and f"]({figure.name})" in md
    with Image.open(figure) as img:
        assert img.size[0] > 300

    lifecycle = _rows(_section(md, "Model lifecycle"))
    events = [(r[1], r[2]) for r in lifecycle[1:]]
    seeded = sorted(
        (r for r in data.messages["control.events"] if r["at"].date() == DAY),
        key=lambda r: r["at"],
    )
    assert events == [
        (r["type"], r["params"].get("model_version") or r["subject"])
        for r in seeded
        if r["type"].startswith(("model.", "retrain.", "budget."))
    ]
    assert ("model.registered", "yolo@1") not in events  # registered the day before
    rolled_back = next(r for r in lifecycle if r[1] == "model.rolled_back")
    assert rolled_back[4] == "canary KS p=0.0001 against production"
    assert "ks_p=0.0001" in rolled_back[5]
    deferred = next(r for r in lifecycle if r[1] == "budget.deferred")
    assert deferred[4] == "retrain budget: 4 requests in the last 24 h"


def test_crossmatches_and_bright_stars(learning_report: tuple[ReportSummary, Dataset]) -> None:
    summary, data = learning_report
    md = summary.path.read_text()
    ztf = next(
        r for r in data.messages["candidates"] if r["crossmatches"] and r["source"] == "ztf-public"
    )
    matches = _rows(_section(md, "Cross-matches"))
    assert matches[0] == [
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
    ]
    # every seeded match of the day's candidates, once, nearest first within its candidate
    seeded = [r for r in data.messages["candidates"] if r["detected_at"].date() == DAY]
    assert len(matches) - 1 == sum(len(r["crossmatches"]) for r in seeded)
    at = next(i for i, r in enumerate(matches) if r[0] == f"`{ztf['image_id'][:12]}`")
    assert matches[at][4:] == ["ztf:ps1", "PS1-123", "0.80", "18.20", "galaxy", "—"]
    assert matches[at + 1][:4] == ["—"] * 4  # the same candidate's next match
    bright_star = ["ztf:gaia_bright", "nearest_bright", "12.00", "11.50", "star", "yes"]
    assert matches[at + 1][4:] == bright_star
    # a faint star at 0.5″ and a bright star beyond its 30″ radius are no bright neighbours
    hip = next(r for r in matches if r[5] == "HIP 7")
    faint = next(r for r in matches if r[5] == "Gaia DR3 42")
    assert hip[-1] == "—" and faint[-1] == "—"

    bright = _section(md, "Next to a bright star")
    candidates = len(seeded)
    assert f"**1 of {candidates} flagged candidates** ({candidates} with a cross-match)" in bright
    rows = _by_first(bright)
    assert list(rows) == ["Image", f"`{ztf['image_id'][:12]}`"]
    row = rows[f"`{ztf['image_id'][:12]}`"]
    assert row[:2] == ["ztf-public", "ZTF25aaaaaaa"]
    assert row[4:9] == ["ztf:gaia_bright:nearest_bright", "11.50", "12.0", "35.2", "1"]

    labels = _section(md, "Pseudo-labels")
    per_source = _by_first(labels)
    for source in ("synth-a", "ztf-public"):
        mine = [r for r in seeded if r["source"] == source]
        status = Counter(r["label_status"] for r in mine)
        assert per_source[source] == [
            str(len(mine)),
            str(status["pseudo_label"]),
            str(sum(bool(r.get("sample_id")) for r in mine)),
            str(status["rejected"]),
            str(status["pending"]),
            str(sum(bool(r["boxes"]) for r in mine)),
        ]
    reasons = labels[labels.index("Label reasons") :]
    assert "| rejected | on a catalog object (ztf:gaia_bright, ztf:ps1) | 1 |" in reasons
    samples = {r["image_id"] for r in seeded if r.get("sample_id")}
    held = sum(is_held_out(i, 0.2) for i in samples)
    requests = sum(e["type"] == "retrain.requested" for e in data.messages["control.events"])
    assert (len(samples), held, requests) == (1, 0, 1)  # the seeded learning loop
    assert "The dataset holds 1 training sample, 0 of them held out; 1 retrain requested" in labels


def test_thumbnails_have_the_candidates_boxes(
    learning_report: tuple[ReportSummary, Dataset],
) -> None:
    summary, data = learning_report
    images = {r["image_id"]: r for r in data.messages["images.raw"]}
    candidate = next(
        r for r in data.messages["candidates"] if r["source"] == "ztf-public" and r["boxes"]
    )
    image = images[candidate["image_id"]]
    thumb = next(p for p in summary.thumbnails if p.name == f"{image['image_id'][:16]}.png")
    plain = thumbnail_png(image["pixels"], image["format"])
    assert thumb.read_bytes() != plain
    with Image.open(thumb) as drawn, Image.open(io.BytesIO(plain)) as bare:
        drawn_px = np.asarray(drawn.convert("RGB")).astype(int)
        bare_px = np.asarray(bare.convert("RGB")).astype(int)
    assert drawn_px.shape == bare_px.shape
    # the box's edges are drawn where the box is (24-pixel cutout at 96: 4 per pixel) ...
    box = candidate["boxes"][0]
    scale = drawn_px.shape[1] / image["width"]
    x1, y1, x2, y2 = (round(box[k] * scale) for k in ("x1", "y1", "x2", "y2"))
    assert (drawn_px[y2, x1 : x2 + 1] == (0, 255, 0)).all()  # bottom edge
    assert (drawn_px[y1 : y2 + 1, x1] == (0, 255, 0)).all()  # left edge
    # ... and the cutout is untouched away from the box and its label
    assert (drawn_px[y2 + 2 :, :] == bare_px[y2 + 2 :, :]).all()


def test_without_a_learning_loop_there_is_no_registry(
    client: Client, dataset: Dataset, tmp_path: Path
) -> None:
    out = tmp_path / "reports"
    stale = out / "report-2025-03-14-map50.png"
    out.mkdir()
    stale.write_bytes(b"an earlier run's figure")
    needs = LearningNeeds(retrain_min_samples=64, gate_min_held_out=30, held_out_fraction=0.2)
    summary = generate_report(client, out, day=DAY, learning_needs=needs)
    md = summary.path.read_text()
    samples = {r["image_id"] for r in dataset.messages["candidates"] if r.get("sample_id")}
    candidates = len(dataset.messages["candidates"])
    readiness = next(line for line in md.splitlines() if line.startswith("No retrain yet"))
    assert readiness.startswith(f"No retrain yet: the dataset holds {len(samples)} training")
    assert f"about 150 samples, {150 - len(samples)} more" in readiness
    if samples:
        expected = -(-(150 - len(samples)) * candidates // len(samples))
        assert f"about {expected:,} more candidates" in readiness
    for title in ("Model registry", "Learning trajectory", "Model lifecycle"):
        assert f"## {title}\n" not in md
    assert not stale.exists() and stale not in summary.plots
    assert "## Pseudo-labels\n" in md and "## Cross-matches\n" in md
    assert "**0 of 2 flagged candidates** (2 with a cross-match)" in md


def test_every_learning_query_runs_on_the_schema(client: Client, learning: Dataset) -> None:
    start = datetime(2025, 3, 14, tzinfo=UTC)
    params = {"start": start, "end": start + timedelta(days=1), "limit": 5}
    for name, sql in LEARNING_QUERIES.items():
        result = client.query(sql, parameters=params)
        assert result.column_names and result.result_rows, name

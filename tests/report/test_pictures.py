"""The report's decision, flag-rate, sky and health figures, from a real chdb warehouse.

The data is written through the real codec and writer (``load``, every message twice); the
expected figures are computed here from what was written, not from the report's own code.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pytest
from astropy_healpix import HEALPix
from matplotlib.collections import PolyCollection

from processors.core.clickhouse import Client
from processors.core.imaging import encode_png
from processors.core.progress import ProgressFile
from processors.report import picture_queries as pq
from processors.report.daily import generate_report
from processors.report.flag_rates import FLAG_BAND, EventMark, FlagWindow, flag_rate_figure
from processors.report.sky import NSIDE
from tests.report.conftest import DAY, NOON, Dataset, _image, load
from tests.report.test_daily import _section, _table, _valid_png

START = datetime(2025, 3, 14, tzinfo=UTC)
WINDOW = {"start": START, "end": START + timedelta(days=1)}
DETECTORS = ("mahalanobis", "energy", "knn")


def _score(
    img: dict[str, Any],
    at: datetime,
    scores: tuple[float, ...] | None,
    th: tuple[float, ...],
    k: int = 2,
) -> dict[str, Any]:
    """A production score; ``scores`` None: uncalibrated (energy raw only, placeholder 0)."""
    if scores is None:
        detectors = [
            {"detector": "energy", "raw": 3.0, "score": 0.0, "threshold": None, "vote": False}
        ]
        votes, calibrated = 0, False
    else:
        detectors = [
            {"detector": d, "raw": s, "score": s, "threshold": t, "vote": s > t}
            for d, s, t in zip(DETECTORS, scores, th, strict=True)
        ]
        votes, calibrated = sum(s > t for s, t in zip(scores, th, strict=True)), True
    return {
        "image_id": img["image_id"],
        "source": img["source"],
        "model_version": "m1",
        "backbone": "efficientnet_lite0",
        "role": "production",
        "detectors": detectors,
        "ensemble_score": float(np.mean(scores)) if scores else 0.0,
        "votes_for": votes,
        "votes_needed": k,
        "is_candidate": votes >= k,
        "calibrated": calibrated,
        "batch_size": 8,
        "latency_ms": 5.0,
        "control_offset": 0,
        "scored_at": at,
        "embedding": None,
    }


def _calibration(data: Dataset, event_id: str, at: datetime, source: str, target: float) -> None:
    data.add(
        "control.events",
        {
            "event_id": event_id,
            "type": "calibration.updated",
            "subject": source,
            "at": at,
            "issued_by": "controller",
            "params": {
                "model_version": "m1",
                "target_fpr": target,
                "vote_k": 2,
                "thresholds": dict.fromkeys(DETECTORS, 0.9),
                "reason": "initial",
            },
            "evidence": {},
            "caused_by": [],
        },
    )


def build(rng: np.random.Generator) -> tuple[Dataset, dict[str, Any]]:
    """Source ``a``: 5 uncalibrated then 24 calibrated images at random sky positions (some
    repeated, one without); ``b``: 10 calibrated images without a position, per-detector
    thresholds. Returns the data and what the tests expect."""
    data = Dataset()
    expected: dict[str, Any] = {"margins": [], "flags": {"a": [], "b": []}}
    hp = HEALPix(nside=NSIDE, order="nested")
    cells = rng.integers(0, hp.npix, 12)  # 24 images over 12 cell centres: repeats
    lon, lat = hp.healpix_to_lonlat(np.concatenate([cells, cells]))
    positions: list[tuple[float | None, float | None]] = list(
        zip(lon.to_value(u.deg).tolist(), lat.to_value(u.deg).tolist(), strict=True)
    )
    positions[3] = (None, None)  # a cutout without a position
    expected["a_cells"] = {int(c) for i, c in enumerate(np.concatenate([cells, cells])) if i != 3}
    _calibration(data, "cal-a", NOON, "a", 0.05)
    _calibration(data, "cal-b", NOON, "b", 0.1)
    at = NOON - timedelta(minutes=1)
    for n in range(5):
        img = data.add(
            "images.raw",
            _image(
                "a",
                encode_png(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)),
                "png",
                (8, 8, 3),
                ra=10.0,
                dec=n,
            ),
        )
        data.add("scores", _score(img, at + timedelta(seconds=n), None, ()))
    for n, (ra, dec) in enumerate(positions):
        img = data.add(
            "images.raw",
            _image(
                "a",
                encode_png(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)),
                "png",
                (8, 8, 3),
                ra=ra,
                dec=dec,
            ),
        )
        s = tuple(round(float(x), 2) for x in rng.choice(np.arange(0.5, 1.0, 0.01), 3))
        rec = data.add("scores", _score(img, NOON + timedelta(minutes=n), s, (0.9, 0.9, 0.9)))
        expected["margins"].append(
            (sorted((x - 0.9 for x in s), reverse=True)[1], rec["is_candidate"])
        )
        expected["flags"]["a"].append(rec["is_candidate"])
    for n in range(10):
        img = data.add(
            "images.raw",
            _image(
                "b", encode_png(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)), "png", (8, 8, 3)
            ),
        )
        s = (0.95, 0.2 + 0.07 * n, 0.85)
        rec = data.add(
            "scores", _score(img, NOON + timedelta(minutes=n, seconds=30), s, (0.97, 0.6, 0.8))
        )
        expected["flags"]["b"].append(rec["is_candidate"])
    data.add(
        "control.events",
        {
            "event_id": "drift-a",
            "type": "drift.detected",
            "subject": "a",
            "at": NOON + timedelta(minutes=10),
            "issued_by": "controller",
            "params": {"model_version": "m1", "reason": "flag flood"},
            "evidence": {},
            "caused_by": [],
        },
    )
    data.messages["control.events"].sort(key=lambda r: r["at"])
    return data, expected


@pytest.fixture
def pictures(client: Client) -> dict[str, Any]:
    data, expected = build(np.random.default_rng(11))
    load(client, data)
    return expected


def test_vote_margin_puts_every_flag_right_of_the_line(
    client: Client, pictures: dict[str, Any]
) -> None:
    bins = 100
    rows = client.query(pq.VOTE_MARGINS, parameters={**WINDOW, "bins": bins}).named_results()
    got = {(r["source"], bool(r["is_candidate"]), r["bin"]): r["n"] for r in rows}
    want: dict[tuple[str, bool, int], int] = {}
    for margin, flagged in pictures["margins"]:
        # (lo, hi] bins of width 2 / bins on [-1, 1]
        b = int(np.ceil((margin + 1.0) * bins / 2.0)) - 1
        want[("a", flagged, b)] = want.get(("a", flagged, b), 0) + 1
        assert (margin > 0) == flagged  # the vote and the margin agree
    assert {k: v for k, v in got.items() if k[0] == "a"} == want
    assert all(b >= bins // 2 for (_, flagged, b) in got if flagged)
    assert all(b < bins // 2 for (_, flagged, b) in got if not flagged)
    # b: per-detector thresholds; margin = 2nd largest of (-0.02, s - 0.6, 0.05)
    b_flags = sum(pictures["flags"]["b"])
    assert sum(n for (s, f, _), n in got.items() if s == "b" and f) == b_flags > 0


def test_report_shows_uncalibrated_apart_and_no_mean_threshold(
    client: Client, pictures: dict[str, Any], tmp_path: Path
) -> None:
    stale = tmp_path / "report-2025-03-14-scores.png"
    stale.write_bytes(b"old")
    summary = generate_report(client, tmp_path, day=DAY, flag_window=4)
    md = summary.path.read_text()
    assert not stale.exists() and "mean threshold" not in md
    section = _section(md, "Why images were flagged")
    rows = _table(section)
    flags_a = pictures["flags"]["a"]
    assert rows["a"] == [str(len(flags_a)), str(sum(flags_a)), "5"]
    assert rows["b"] == ["10", str(sum(pictures["flags"]["b"])), "0"]
    assert "at least 2 detectors vote" in section
    sources = _table(_section(md, "Sources"))  # the rate is of calibrated images only
    assert sources["a"][1:4] == ["29", str(sum(flags_a)), f"{100 * sum(flags_a) / 24:.1f}%"]
    assert sources["a"][8] == "5"
    decisions = tmp_path / "report-2025-03-14-decisions.png"
    assert decisions in summary.plots and _valid_png(decisions)[1] > 400


def test_flag_rate_windows_band_and_marks(
    client: Client, pictures: dict[str, Any], tmp_path: Path
) -> None:
    rows = client.query(pq.FLAG_WINDOWS, parameters={**WINDOW, "window": 4}).named_results()
    a = [r for r in rows if r["source"] == "a"]
    flags = pictures["flags"]["a"]
    assert [(r["n"], r["flagged"]) for r in a] == [
        (len(flags[i : i + 4]), sum(flags[i : i + 4])) for i in range(0, len(flags), 4)
    ]
    summary = generate_report(client, tmp_path, day=DAY, flag_window=4)
    table = _table(_section(summary.path.read_text(), "Self-correction at a glance"))
    lo, hi = FLAG_BAND
    in_band = sum(lo * 0.05 <= sum(flags[i : i + 4]) / 4 <= hi * 0.05 for i in range(0, 24, 4))
    assert table["a"][:3] == ["6", "6", str(in_band)]
    assert (tmp_path / "report-2025-03-14-flag-rate.png") in summary.plots

    t0 = NOON
    windows = {
        "a": [FlagWindow(4, 1, t0, t0 + timedelta(minutes=3))],
        "b": [FlagWindow(4, 0, t0, t0 + timedelta(minutes=4))],
    }
    targets = {"a": [(t0 - timedelta(hours=1), 0.05)], "b": [(t0, 0.1)]}
    marks = [
        EventMark(t0 + timedelta(minutes=1), "drift.detected", "a"),
        EventMark(t0 + timedelta(minutes=2), "pipeline.paused", "pipeline"),
    ]
    fig = flag_rate_figure(windows, targets, marks, 4)
    assert fig is not None
    ax_a, ax_b = fig.axes
    for ax, target in ((ax_a, 0.05), (ax_b, 0.1)):
        band = [c for c in ax.collections if isinstance(c, PolyCollection)]
        ys = {
            round(float(y), 9) for c in band for path in c.get_paths() for y in path.vertices[:, 1]
        }
        assert ys == {round(lo * target, 9), round(hi * target, 9)}
    labels_a = {line.get_label() for line in ax_a.lines}
    labels_b = {line.get_label() for line in ax_b.lines}
    assert {"drift.detected", "pipeline.paused"} <= labels_a
    assert "pipeline.paused" in labels_b and "drift.detected" not in labels_b


def test_sky_coverage_counts_cells_independently(
    client: Client, pictures: dict[str, Any], tmp_path: Path
) -> None:
    md = generate_report(client, tmp_path, day=DAY).path.read_text()
    rows = _table(_section(md, "Sky coverage"))
    cells = pictures["a_cells"]
    # a: 23 placed (one without), 5 uncalibrated images at (10, 0..4) deg; b: none placed
    extra = {
        int(c)
        for c in HEALPix(nside=NSIDE, order="nested").lonlat_to_healpix(
            [10.0] * 5 * u.deg, np.arange(5.0) * u.deg
        )
    }
    assert rows["a"][:2] == ["28", str(len(cells | extra))]
    assert rows["a"][3] == "1"
    assert rows["b"][:2] == ["0", "0"] and rows["b"][3] == "10"
    assert rows["**all sources**"][1] == str(len(cells | extra))


def test_health_records_and_reports_memory_and_rate(
    client: Client, pictures: dict[str, Any], tmp_path: Path
) -> None:
    progress = ProgressFile(tmp_path / "progress", "score", min_interval_s=0.0)
    progress.add("consumed", 39)
    progress.write(force=True)
    proc = progress.counts["process"]
    assert proc["pid"] == os.getpid() and proc["rss_bytes"] > 10 * 2**20
    assert proc["peak_rss_bytes"] >= proc["rss_bytes"] and proc["written_at"] >= proc["started_at"]
    summary = generate_report(client, tmp_path, day=DAY, processes={"score": progress.counts})
    section = _section(summary.path.read_text(), "Pipeline health")
    row = _table(section)["score"]
    assert row[0] == str(os.getpid())
    assert row[4] == f"{proc['rss_bytes'] / 2**20:.0f}" and row[6] == "39"
    assert "(report-2025-03-14-rate.png)" in section
    assert "39 production scores" in section  # 5 + 24 + 10
    bare = generate_report(client, tmp_path / "bare", day=DAY)
    assert "which this report was not given" in bare.path.read_text()


def test_a_verdict_that_disagrees_with_its_votes_shows_left_of_the_line(client: Client) -> None:
    """The margin is computed from the recorded scores and thresholds, not from the verdict: a
    scorer that flagged an image without the votes (an injected fault) is visible as a red bar
    left of the line."""
    data = Dataset()
    img = data.add("images.raw", _image("a", b"px", "png", (1, 1, 1)))
    bad = _score(img, NOON, (0.5, 0.6, 0.95), (0.9, 0.9, 0.9)) | {"is_candidate": True}
    data.add("scores", bad)
    load(client, data)
    rows = client.query(pq.VOTE_MARGINS, parameters={**WINDOW, "bins": 100}).named_results()
    assert [(r["is_candidate"], r["bin"]) for r in rows] == [(1, int(np.ceil(0.7 * 50)) - 1)]


def test_read_processes_reads_every_progress_file_but_in_flight_markers(tmp_path: Path) -> None:
    from processors.report.run_report import read_processes

    for name in ("score", "sink"):
        ProgressFile(tmp_path, name).write(force=True)
    (tmp_path / "score.inflight.json").write_text("{}")
    processes = read_processes(tmp_path)
    assert sorted(processes) == ["score", "sink"]
    assert all(p["process"]["pid"] == os.getpid() for p in processes.values())


@pytest.mark.parametrize("name", ["flag_rates", "health", "sky"])
def test_doctests(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"processors.report.{name}"))
    assert result.attempted > 0 and result.failed == 0

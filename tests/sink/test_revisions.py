"""Revised decisions in the warehouse: score_revisions keeps every revision, the views give the
corrected catalogue and leave the live decisions as they were published."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from processors.core.clickhouse import Client
from processors.sink.writer import ClickHouseWriter


def revision(make: SimpleNamespace, image_id: str, number: int, *, flagged: bool) -> dict[str, Any]:
    return make.roundtrip(
        {
            "image_id": image_id,
            "source": "synth",
            "model_version": "effnet-lite0@1",
            "revision": number,
            "detectors": [
                {"detector": d, "raw": 1.0, "score": 0.5, "threshold": 0.97, "vote": flagged}
                for d in ("mahalanobis", "energy", "knn")
            ],
            "ensemble_score": 0.99 if flagged else 0.5,
            "votes_for": 3 if flagged else 0,
            "votes_needed": 2,
            "is_candidate": flagged,
            "was_candidate": True,
            "calibration_id": f"cal-{number}",
            "revised_calibration_id": "cal-0",
            "revision_event_id": f"rev-{number}",
            "revised_at": make.T0 + timedelta(seconds=10 * number),
        },
        "skyloop.ScoreRevision",
    )


def test_the_latest_revision_corrects_the_catalogue_and_the_live_rows_stay(
    client: Client, make: SimpleNamespace
) -> None:
    writer = ClickHouseWriter(client)
    ids = [make.image("synth", seed)["image_id"] for seed in range(3)]
    writer.insert("scores", [(make.score(i), 0, n) for n, i in enumerate(ids)])  # all flagged
    writer.insert("candidates", [(make.candidate(i), 0, n) for n, i in enumerate(ids)])
    # image 0 withdrawn by revision 1; image 1 withdrawn by 1, flagged again by 2; 2 untouched
    revised = [
        revision(make, ids[0], 1, flagged=False),
        revision(make, ids[1], 2, flagged=True),
        revision(make, ids[1], 1, flagged=False),  # delivered late: revision 2 still wins
    ]
    writer.insert("scores.revised", [(r, 0, n) for n, r in enumerate(revised)])
    writer.insert("scores.revised", [(revised[0], 0, 0)])  # redelivered: replaces itself

    rows = dict(
        (r[0], r[1:])
        for r in client.query(
            "SELECT image_id, is_candidate, live_is_candidate, revision, revised_under, "
            "revision_event_id FROM scores_revised"
        ).result_rows
    )
    assert rows[ids[0]] == (0, 1, 1, "cal-1", "rev-1")
    assert rows[ids[1]] == (1, 1, 2, "cal-2", "rev-2")
    assert rows[ids[2]] == (1, 1, 0, "", "")
    withdrawn = dict(client.query("SELECT image_id, withdrawn FROM candidates_revised").result_rows)
    assert withdrawn == {ids[0]: 1, ids[1]: 0, ids[2]: 0}
    assert client.query("SELECT count() FROM score_revisions FINAL").result_rows == [(3,)]
    # the live decisions and the hourly aggregates stay as published
    assert client.query("SELECT sum(is_candidate) FROM scores FINAL").result_rows == [(3,)]
    assert client.query("SELECT uniqIfMerge(flags) FROM hourly_scores").result_rows == [(3,)]

"""`skyloop run --source sdss:TARGETS.csv?base_url=<fake survey> --source synthetic` end to end:
the SDSS targets arrive through a misbehaving service, every one is scored or dead-lettered
with its reason, and the synthetic sky shares the run."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.ingest.fake_survey import fake_survey

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES = 40
OPTIONS = (
    "size=48&read_timeout_s=0.5&total_timeout_s=1&attempts=3&backoff_s=0.02"
    "&max_backoff_s=0.2&rate_per_s=50"
)


def _skyloop(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    env.update({"SKYLOOP_E2E_MARKER": uuid.uuid4().hex, "HF_HUB_OFFLINE": "1"})
    return subprocess.run(
        [sys.executable, "-m", "processors.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_mixes_a_misbehaving_sdss_with_the_synthetic_sky(tmp_path: Path) -> None:
    names = [f"gal{i:02d}" for i in range(10)]
    targets = tmp_path / "targets.csv"
    rows = [f"{180.0 + i * 0.01:.5f},{1.0 + i * 0.01:.5f},{n}" for i, n in enumerate(names)]
    targets.write_text("ra,dec,name\n" + "\n".join(rows) + "\n180.5,1.5,offsky\n")
    data = tmp_path / "data"
    with fake_survey() as survey:
        survey.stall_s = 1.0
        survey.retry_after = "0"
        survey.plan("sdss", ["500", "429", "reset", "html200", "timeout", "503", "cut"])
        survey.always[(180.5, 1.5)] = "blank"
        spec = f"sdss:{targets}?base_url={survey.base_url('sdss')}&{OPTIONS}"
        done = _skyloop(
            "run",
            "--source",
            spec,
            "--source",
            "synthetic",
            "--images",
            str(IMAGES),
            "--data-dir",
            str(data),
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        "sdss: 11 targets, 10 published (10 distinct images), 1 failed (BlankImage 1)"
        in done.stdout
    ), done.stdout

    def sql(query: str) -> list[list[str]]:
        out = _skyloop("sql", query, "--data-dir", str(data), "--format", "tsv", timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        return [line.split("\t") for line in out.stdout.splitlines()[1:] if line]

    scored = sql(
        "SELECT i.source, i.provenance['target'], i.survey, i.bands FROM images AS i FINAL "
        "INNER JOIN (SELECT image_id FROM scores FINAL WHERE role = 'production') AS s "
        "ON s.image_id = i.image_id"
    )
    sdss = sorted(row[1] for row in scored if row[0] == "sdss")
    assert sdss == names
    assert {tuple(row[2:]) for row in scored if row[0] == "sdss"} == {("sdss", "3")}
    synthetic = [row for row in scored if row[0] == "synthetic"]
    assert len(synthetic) == IMAGES - 11  # the limit counts the dead letter too
    letters = sql("SELECT source, key, error_class, message FROM dead_letters FINAL")
    assert [row[:3] for row in letters] == [["sdss", "targets.csv:12:offsky", "BlankImage"]]

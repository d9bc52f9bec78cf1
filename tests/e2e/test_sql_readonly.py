"""`skyloop sql` during and after a real `skyloop run`: reads answered, a DROP and reaches
outside the database refused, and the run unaffected (every image stored)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from processors.core.clickhouse import connect

pytestmark = pytest.mark.e2e

IMAGES = 64


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    env.update(HF_HUB_OFFLINE="1", SKYLOOP_REFERENCE_SIZE="20", SKYLOOP_BATCH_SIZE="16")
    return env


def _sql(sql: str, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processors.cli", "sql", sql, "--data-dir", str(data)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sql_during_and_after_a_run_is_read_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = open(tmp_path / "run.log", "w")  # noqa: SIM115 (closed below)
    command = ["run", "--images", str(IMAGES), "--data-dir", str(data)]
    run = subprocess.Popen(
        [sys.executable, "-m", "processors.cli", *command],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 400
        while (
            not (data / "latest").exists()
            or not (Path((data / "latest").read_text().strip()) / "sink.json").exists()
        ):
            assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the sink never served queries"
            time.sleep(0.5)
        run_dir = Path((data / "latest").read_text().strip())
        stack = run_dir / "stack.json"
        assert stat.S_IMODE(stack.stat().st_mode) == 0o600
        assert json.loads(stack.read_text())["query_token"]
        port = json.loads((run_dir / "sink.json").read_text())["port"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/sql", data=b"SELECT 1", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as no_token:
            urllib.request.urlopen(request, timeout=30)
        assert no_token.value.code == 401

        dropped = _sql("DROP TABLE scores", data)
        assert dropped.returncode == 2, dropped.stderr
        assert "refused: DROP" in dropped.stderr and "read-only" in dropped.stderr
        stolen = _sql("SELECT * FROM file('/etc/passwd', 'LineAsString')", data)
        assert stolen.returncode == 2 and "file()" in stolen.stderr, stolen.stderr
        counted = _sql("SELECT count() FROM images FINAL", data)
        assert counted.returncode == 0, counted.stderr
        assert run.poll() is None, "the run ended before the queries: they did not test it live"
        assert run.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        log.close()

    # after the run: the files directly, read-only the same way
    written = tmp_path / "written.csv"
    wrote = _sql(f"INSERT INTO FUNCTION file('{written}', 'CSV', 'x UInt8') VALUES (1)", data)
    assert wrote.returncode == 2 and "refused: INSERT" in wrote.stderr, wrote.stderr
    assert not written.exists()
    assert _sql("DROP TABLE scores", data).returncode == 2
    client = connect(f"chdb://{run_dir / 'clickhouse'}")
    try:
        assert client.command("SELECT count() FROM images FINAL") == IMAGES
        assert (
            client.command("SELECT count() FROM scores FINAL WHERE role = 'production'") == IMAGES
        )
    finally:
        client.close()
